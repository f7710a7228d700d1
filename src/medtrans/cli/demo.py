"""``medtrans demo``: phantom → train → translate → evaluate → report, with no arguments."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medtrans.cli import app


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("medtrans-demo"), "--out", help="Folder for data, runs, predictions, "
                             "evaluation and report.html: new, empty, or a previous demo (replaced)."),
    quick: bool = typer.Option(False, "--quick", help="A much smaller variant (about a minute) for tests."),
) -> None:
    """Simulate heads (MNI anatomy, 2 mm), train regression, pix2pix and flow for T1→T2, translate,
    evaluate, write an HTML report (with flow's std map).

    Example: medtrans demo --out /tmp/medtrans-demo
    """
    from medtrans.demo import BASELINES, run_demo

    console = Console()
    result = run_demo(out, quick=quick, say=lambda text: console.print(f"[bold]{text}[/]"), progress=True)
    table = Table(title=f"T1 → T2, {len(result.test_subjects)} test subjects (subject means, brain mask)")
    for column in ("model", "PSNR dB", "SSIM", "MAE"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, score in result.scores.items():
        table.add_row(name, f"{score['psnr']:.2f}", f"{score['ssim']:.4f}", f"{score['mae']:.2f}")
    console.print(table)
    for name, score in result.scores.items():
        if name not in BASELINES:
            for baseline in BASELINES:
                base = result.scores[baseline]
                console.print(f"{name} vs {baseline}: PSNR {score['psnr'] - base['psnr']:+.2f} dB, "
                              f"SSIM {score['ssim'] - base['ssim']:+.4f}")
    rows = [("data (phantom)", result.data), *((f"run {n}", p) for n, p in result.runs.items()),
            *((f"predictions {n}", p) for n, p in result.predictions.items()),
            *((f"evaluation {n}", p) for n, p in result.evaluations.items()), ("report", result.report)]
    for label, path in rows:  # plain lines: paths are never cut to the terminal width
        typer.echo(f"{label:<38} {path}")
    total = sum(result.seconds.values())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"done in {total:.0f} s ({steps})")
