"""``medtrans info``: what an image is and where it lies in the world, or what a dataset folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medtrans.cli import app


def _is_dicom_series(folder: Path) -> bool:
    """A folder with DICOM files directly inside is a series; otherwise it is a dataset root."""
    from medtrans.io.dicom import is_dicom_file

    return any(p.is_file() and (p.suffix.lower() == ".dcm" or is_dicom_file(p)) for p in folder.iterdir())


def _table(info: dict) -> Table:
    table = Table(title=info["path"], show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("format", str(info["format"]))
    table.add_row("modality", f"{info['modality'] or 'unknown'} ({info['units']})")
    table.add_row("shape", " x ".join(str(n) for n in info["shape"]))
    table.add_row("spacing (mm)", " x ".join(f"{s:g}" for s in info["spacing"]))
    table.add_row("orientation", info["orientation"])
    rows = ("  ".join(f"{v:11.4f}" for v in row) for row in info["affine"])
    table.add_row("affine (RAS mm)", "\n".join(rows))
    table.add_row("dtype", info["dtype"])
    table.add_row("range", f"{info['min']:g} … {info['max']:g}")
    for key in ("series_uid", "series_description", "synthetic"):
        if info.get(key):
            table.add_row(key.replace("_", " "), str(info[key]))
    if info.get("geometry_assumed"):
        table.add_row("geometry", "[yellow]no sidecar: 1 mm spacing and identity orientation assumed[/]")
    return table


def alignment_report(path: Path, worst: int = 5) -> str:
    """Flagged and worst-aligned pairs of an alignment.csv (a folder holding one is accepted)."""
    from medtrans.data import registration as reg
    from medtrans.errors import MedtransError

    csv_path = path / "alignment.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise MedtransError(csv_path, "no alignment QA file",
                            "make one: medtrans plan DATASET … --register rigid")
    rows = reg.read_csv(csv_path)
    flagged = [r for r in rows if r["flagged"]]
    lines = [f"alignment {csv_path}: {len(rows)} pair(s), {len(flagged)} flagged; worst:"]
    return "\n".join(lines + [f"  - {line}" for line in reg.worst_pairs(rows, max(worst, len(flagged)))])


def network_parameters(run_dir: Path) -> list[tuple[str, str, int]]:
    """(attribute, class, parameter count) of each network of the run's method, as configured.

    Built from the run's config.yaml (untrained, so a run that never wrote a checkpoint works too);
    the counts are the checkpoint's, which has exactly these shapes.
    """
    from medtrans.engine.run import build_method, read_run_config

    method = build_method(read_run_config(run_dir), init_weights=False)
    return [(name, type(net).__name__, sum(p.numel() for p in net.parameters()))
            for name, net in method.named_children() if any(True for _ in net.parameters())]


def _run_table(run_dir: Path) -> Table:
    rows = network_parameters(run_dir)
    table = Table(title=f"{run_dir} (run)", title_justify="left")
    for column in ("network", "class", "parameters"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name, cls, count in rows:
        table.add_row(name, cls, f"{count:,}")
    table.add_row("total", "", f"{sum(count for *_, count in rows):,}", style="bold")
    return table


@app.command("info")
def info(
    path: Path = typer.Argument(..., help="An image file (.nii.gz, .dcm, .mha, .nrrd, .npy, .png, .tif), "
                                "a DICOM series folder, a dataset folder or a training run folder."),
    series: str = typer.Option(None, "--series", help="SeriesInstanceUID to pick in a folder of several."),
    modality: str = typer.Option(None, "--modality", help="Modality to report when the name says none."),
    layout: str = typer.Option(None, "--layout", help="Layout of a dataset folder (default: detect)."),
    as_json: bool = typer.Option(False, "--json", help="Print the description as JSON."),
    alignment: Path = typer.Option(
        None, "--alignment", help="A dataset's alignment.csv (written by medtrans plan --register): "
        "report the worst and the flagged pairs."
    ),
) -> None:
    """Print shape, spacing, orientation, affine, dtype, range and modality of an image or DICOM series.

    A folder that is not a DICOM series is read as a dataset and summarised instead; a run folder (one
    with the config.yaml that medtrans train writes) prints each network's parameter count.

    Examples: medtrans info sub-01/ct.nii.gz · medtrans info dicom/series1/ --json ·
    medtrans info data/brats/ --layout brats · medtrans info runs/phantom_t1_t2_regression
    """
    from medtrans.engine.run import CONFIG_FILE
    from medtrans.io import describe

    if path.is_dir() and (path / CONFIG_FILE).is_file():
        rows = network_parameters(path)
        if as_json:
            typer.echo(json.dumps({name: {"class": cls, "parameters": n} for name, cls, n in rows}, indent=1))
        else:
            Console().print(_run_table(path))
        return

    if path.is_dir() and not _is_dicom_series(path):
        from medtrans.data.survey import dataset_report

        typer.echo(dataset_report(path, layout))
        if alignment is not None:
            typer.echo(alignment_report(alignment))
        return
    description = describe(path, modality=modality, series_uid=series)
    if as_json:
        typer.echo(json.dumps(description, indent=1))
    else:
        Console().print(_table(description))
