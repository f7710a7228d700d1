"""``medtrans plan``: fingerprint a dataset for one task and write the preprocessing plan (plan.json)."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from medtrans.cli import app


@app.command("plan")
def plan(
    dataset: Path = typer.Argument(..., help="Dataset root folder (any supported layout)."),
    source: list[str] = typer.Option(..., "--source", "-s", help="Source modality; repeat for several."),
    target: str = typer.Option(..., "--target", "-t", help="Target modality, e.g. ct."),
    dims: str = typer.Option("2d", "--dims", help="2d, 2.5d or 3d (decides slice or patch size)."),
    layout: str = typer.Option(
        None, "--layout", help="Force a layout: generic, nnunet, brats, ixi, synthrad."
    ),
    out: Path = typer.Option(Path("plan.json"), "--out", "-o", help="Where to write the plan."),
    strict: bool = typer.Option(
        False, "--strict", help="Error (instead of skipping) on subjects missing a modality."
    ),
) -> None:
    """Decide spacing, slice axis, crop/patch size and per-modality normalisation from the data.

    The plan is readable JSON; edit it if you like (it is validated when loaded).

    Example: medtrans plan data/phantom --source t1 --source t2 --target ct --dims 2d -o plan.json
    """
    from medtrans.data.layouts import open_dataset
    from medtrans.data.plan import make_plan

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(dataset, layout=layout)
        result = make_plan(ds, source, target, dims=dims, strict=strict)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    result.save(out)
    axis = "XYZ"[result.slice_axis]
    typer.echo(
        f"{' + '.join(result.sources)} → {result.target} ({result.dims}), {len(result.subjects)} subjects "
        f"({ds.layout}); spacing {'×'.join(f'{s:g}' for s in result.spacing)} mm, slice axis {axis}, "
        f"patch {'×'.join(map(str, result.patch_size))} → {out}"
    )
