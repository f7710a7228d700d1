"""``medtrans predict``: translate whole volumes with a trained run, written in the source geometry."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medtrans.cli import app


@app.command("predict")
def predict(
    run_dir: Path = typer.Argument(..., help="A training run folder (config.yaml, plan.json, checkpoints/)."),
    inputs: list[Path] = typer.Argument(
        ..., help="Image files (single-source models), subject folders (<modality>.nii.gz …) or DICOM series "
        "folders."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <subject>.nii.gz or <subject>/ DICOM."),
    fmt: str = typer.Option(None, "--format", help="nii or dcm; default: DICOM when the input is DICOM, "
                            "else NIfTI."),
    tta: bool = typer.Option(None, "--tta/--no-tta", help="Average over in-plane flips (4 passes per slice); "
                             "their spread is written as a std map. Default: the run's inference.tta."),
    steps: int = typer.Option(None, "--steps", min=1, help="Sampling steps of a diffusion / flow / bridge "
                              "method (default: the run's inference.steps, else the method's own). One-pass "
                              "methods refuse it."),
    samples: int = typer.Option(None, "--samples", min=1, help="Samples per voxel: the prediction is their "
                                "mean; with > 1 a <subject>_<target>_std map is written too. Default: the "
                                "run's inference.samples."),
    seed: int = typer.Option(None, "--seed", help="Seed of the sampling noise (same seed, same files). "
                             "Default: the run's inference.seed."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Slices (or 3D windows) per forward "
                                   "pass; default: the training batch size."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    allow_synthetic: bool = typer.Option(False, "--allow-synthetic", help="Accept sources marked SYNTHETIC "
                                         "(refused by default: a synthetic of a synthetic)."),
) -> None:
    """Translate whole volumes: inverse-normalised to original units, on the source grid, marked synthetic.

    Example: medtrans predict runs/t1_t2_regression data/test/sub-001/t1.nii.gz data/test/sub-002 -o synth/

    Example (8 flow-matching samples of 10 steps, mean and std): medtrans predict runs/t1_t2_flow
    data/test/sub-001 -o synth/ --steps 10 --samples 8 --seed 1
    """
    from medtrans.engine.predictor import Predictor
    from medtrans.errors import MedtransError

    if checkpoint not in ("best", "last"):
        raise MedtransError(None, f"--checkpoint {checkpoint!r} is not known", "use best or last")
    predictor = Predictor.from_run(run_dir, which=checkpoint, device=device, batch_size=batch_size,
                                   steps=steps, samples=samples, seed=seed, tta=tta)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("slices"),
               TimeElapsedColumn())
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(subject: str, done: int, total: int) -> None:
            if subject not in tasks:
                tasks[subject] = bar.add_task(subject, total=total)
            bar.update(tasks[subject], completed=done)

        written = predictor.predict_paths(inputs, out, fmt=fmt, progress=progress,
                                          allow_synthetic=allow_synthetic)
    seconds = time.perf_counter() - start
    for path in written:
        typer.echo(str(path))
    for note in predictor.notes:
        console.print(note, highlight=False)
    console.print(f"{len(written)} synthetic volume(s) from {predictor.name} in {seconds:.1f} s → {out}")
