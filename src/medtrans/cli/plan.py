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
    register: str = typer.Option(
        None,
        "--register",
        help="rigid, affine or none: register every source (and the mask) onto the target and write "
        "alignment.csv and transforms.json beside the plan (none: alignment QA only).",
    ),
    n4: list[str] = typer.Option(
        [], "--n4", help="N4 bias-field correction of this MR modality (repeat for several)."
    ),
    exclude_flagged: bool = typer.Option(
        False, "--exclude-flagged", help="Leave out subjects whose pairs the alignment QA flags."
    ),
    cache: Path = typer.Option(
        None, "--cache", help="Prepared-data cache used by --register (default: cache/ beside the plan)."
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
        result = make_plan(ds, source, target, dims=dims, strict=strict, registration=register,
                           bias_correction=n4)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    if result.registration is not None:
        _align(ds, result, out, cache or out.parent / "cache", exclude_flagged)
    result.save(out)
    axis = "XYZ"[result.slice_axis]
    typer.echo(
        f"{' + '.join(result.sources)} → {result.target} ({result.dims}), {len(result.subjects)} subjects "
        f"({ds.layout}); spacing {'×'.join(f'{s:g}' for s in result.spacing)} mm, slice axis {axis}, "
        f"patch {'×'.join(map(str, result.patch_size))} → {out}"
    )


def _align(ds, plan, out: Path, cache_dir: Path, exclude_flagged: bool) -> None:
    """Register (through the prepared cache, so training reuses it), write the QA beside the plan."""
    import numpy as np

    from medtrans.atomic import write_json
    from medtrans.data import registration as reg
    from medtrans.data.prepare import PreparedCache

    cache = PreparedCache(ds, plan, cache_dir,
                          progress=lambda sid: typer.echo(f"  registered {sid}", err=True))
    rows = cache.alignment
    reg.write_csv(rows, out.parent / "alignment.csv")
    write_json(out.parent / "transforms.json", {
        "meaning": "4x4 RAS matrix per subject and source: target world mm → source world mm",
        "subjects": {sid: {m: np.asarray(t).round(6).tolist() for m, t in cache.transforms(sid).items()}
                     for sid in cache.subject_ids}})
    flagged = sorted({r["subject"] for r in rows if r["flagged"]})
    typer.echo(f"alignment QA → {out.parent / 'alignment.csv'}: {len(flagged)} of {len(cache.subject_ids)} "
               f"subject(s) flagged")
    for line in reg.worst_pairs(rows):
        typer.echo(f"  {line}")
    if exclude_flagged and flagged:
        plan.exclude = flagged
        typer.echo(f"excluded from the plan: {', '.join(flagged)}")
