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


@app.command("info")
def info(
    path: Path = typer.Argument(..., help="An image file (.nii.gz, .dcm, .mha, .nrrd, .npy, .png, .tif), "
                                "a DICOM series folder, or a dataset folder."),
    series: str = typer.Option(None, "--series", help="SeriesInstanceUID to pick in a folder of several."),
    modality: str = typer.Option(None, "--modality", help="Modality to report when the name says none."),
    layout: str = typer.Option(None, "--layout", help="Layout of a dataset folder (default: detect)."),
    as_json: bool = typer.Option(False, "--json", help="Print the description as JSON."),
) -> None:
    """Print shape, spacing, orientation, affine, dtype, range and modality of an image or DICOM series.

    A folder that is not a DICOM series is read as a dataset and summarised instead.

    Examples: medtrans info sub-01/ct.nii.gz · medtrans info dicom/series1/ --json ·
    medtrans info data/brats/ --layout brats
    """
    from medtrans.io import describe

    if path.is_dir() and not _is_dicom_series(path):
        from medtrans.data.survey import dataset_report

        typer.echo(dataset_report(path, layout))
        return
    description = describe(path, modality=modality, series_uid=series)
    if as_json:
        typer.echo(json.dumps(description, indent=1))
    else:
        Console().print(_table(description))
