"""``medtrans report``: one self-contained HTML page from evaluation folders."""

from __future__ import annotations

from pathlib import Path

import typer

from medtrans.cli import app


@app.command("report")
def report(
    inputs: list[Path] = typer.Argument(..., help="Folders written by medtrans evaluate (per_subject.csv + "
                                        "summary.json), or run folders holding them; one model each."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write (one file, images inline)."),
    title: str = typer.Option("medtrans report", "--title", help="Heading of the page."),
    max_slices: int = typer.Option(24, "--max-slices", min=1, help="Slices per subject in the viewer."),
) -> None:
    """Per subject: source | synthetic | target | error map with a slice slider, metric tables, summary.

    Example: medtrans report eval/regression eval/pix2pix -o report.html
    """
    from medtrans.report import write_report
    from medtrans.report.collect import collect

    models, views = collect(list(inputs))
    path = write_report(out, models, views, title=title, max_slices=max_slices)
    typer.echo(f"{path}: {len(models)} model(s), {len(views)} subject(s)")
