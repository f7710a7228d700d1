"""``medtrans export``: a trained run as an ONNX model for inference servers, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medtrans.cli import app


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="A training run folder (config.yaml, plan.json, checkpoints/)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="Largest difference to PyTorch accepted "
                                    "(normalised intensities, data range 2)."),
) -> None:
    """Export the translation network to ONNX (dynamic batch and spatial axes, plan and config inside).

    Example: medtrans export runs/t1t2 -o t1t2.onnx; then medtrans predict t1t2.onnx sub-001/ -o synth/
    """
    from medtrans.engine.export import export_run

    result = export_run(run_dir, out, which=checkpoint, tolerance=tolerance)
    console = Console(stderr=True)
    kind = "a slice of the run's prepared data" if result.real_input else "a random input (no cache found)"
    console.print(f"checked on {kind} {list(result.input_shape)} and a batch of 2 of another size: "
                  f"max |onnxruntime - PyTorch| = {result.max_difference:.2e} (limit {tolerance:g})")
    if result.schedule is not None:
        console.print(f"schedule of the sampling loop: {result.schedule}")
    typer.echo(str(result.path))
