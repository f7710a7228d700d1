"""``medtrans phantom``: write a simulated multi-modal dataset (generic layout) to try everything offline."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from medtrans.cli import app

_DEFAULT_SIZE = {2: "128x128", 3: "128x128x96"}


def parse_size(text: str, dims: int) -> tuple[int, int, int]:
    """'128x128x96' (3D) or '256x256' (2D, one slice) → a 3-axis grid size."""
    from medtrans.errors import MedtransError

    parts = [p for p in text.replace(",", "x").replace("*", "x").split("x") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if dims == 2 and len(values) == 3 and values[2] == 1:
        values = values[:2]
    if len(values) != dims or min(values) < 4:
        example = _DEFAULT_SIZE[dims]
        raise MedtransError(
            None,
            f"--size {text!r} does not give {dims} sizes of at least 4 voxels",
            f"write it like {example}",
        )
    return (values[0], values[1], values[2] if dims == 3 else 1)


def parse_misalign(text: str) -> tuple[float, float]:
    """'6,6' → (6.0 mm, 6.0 degrees)."""
    from medtrans.errors import MedtransError

    try:
        mm, deg = (float(v) for v in text.split(","))
    except ValueError:
        mm = deg = -1.0
    if mm < 0 or deg < 0 or deg > 45:
        raise MedtransError(None, f"--misalign {text!r} is not MM,DEG (two numbers ≥ 0, degrees ≤ 45)",
                            "write it like 4,4 (up to 4 mm and 4 degrees)")
    return mm, deg


@app.command("phantom")
def phantom(
    out: Path = typer.Argument(..., help="Output folder (new or empty): OUT/<subject>/<modality>.nii.gz."),
    subjects: int = typer.Option(8, "--subjects", "-n", min=1, help="Number of subjects."),
    anatomy: str = typer.Option(
        "brain",
        "--anatomy",
        help="brain, pelvis (procedural) or mni (ICBM152 template shipped with nilearn).",
    ),
    dims: int = typer.Option(3, "--dims", min=2, max=3, help="3: volumes; 2: one axial slice per subject."),
    size: str = typer.Option(None, "--size", help="Grid size, e.g. 128x128x96 (3D) or 256x256 (2D)."),
    modalities: str = typer.Option(
        ",".join(("t1", "t2", "pd", "flair", "t1ce", "ct", "cbct", "pet", "ldct", "ldpet")),
        "--modalities",
        help="Comma-separated subset to simulate (fewer is faster).",
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files; another seed, other subjects."),
    workers: int = typer.Option(
        min(2, os.cpu_count() or 1), "--workers", min=1, help="Subjects simulated in parallel processes."
    ),
    voxel_mm: float = typer.Option(
        None, "--voxel-mm", min=0.1, help="Isotropic voxel size in mm (default: the largest that fits the "
        "anatomy in --size); smaller gives a slab of finer voxels, e.g. 96x112x24 at 2 mm."),
    force: bool = typer.Option(False, "--force", help="Write into OUT even if it is not empty."),
    misalign: str = typer.Option(
        None,
        "--misalign",
        help="MM,DEG: move each modality after the first by a random rigid transform up to MM mm and "
        "DEG degrees (written to dataset.json), to try registration.",
    ),
) -> None:
    """Simulate subjects with MR (T1, T2, PD, FLAIR, T1ce), CT, CBCT, PET and low-dose CT/PET.

    Each subject gets its modalities, mask.nii.gz (body), labels.nii.gz (tissue classes) and
    truth/<modality>.nii.gz (the signal without noise or bias field); dataset.json records units,
    label names, every simulation parameter and, with --misalign, each modality's applied motion.

    Example: medtrans phantom data/phantom --subjects 20 --anatomy brain --size 128x128x96 --seed 0
    """
    from medtrans.data.phantom import ANATOMIES, MODALITIES, PhantomSpec, write_phantom
    from medtrans.errors import MedtransError

    if anatomy not in ANATOMIES:
        raise MedtransError(
            None, f"--anatomy {anatomy!r} is not known", f"choose one of {', '.join(ANATOMIES)}"
        )
    chosen = tuple(dict.fromkeys(m.strip().lower() for m in modalities.split(",") if m.strip()))
    unknown = [m for m in chosen if m not in MODALITIES]
    if unknown or not chosen:
        raise MedtransError(
            None,
            f"--modalities: unknown {', '.join(unknown) or '(none given)'}",
            f"choose from {', '.join(MODALITIES)}",
        )
    grid = parse_size(size or _DEFAULT_SIZE[dims], dims)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise MedtransError(
            out, "exists and is not an empty folder", "give a new folder, or add --force to write into it"
        )
    spec = PhantomSpec(anatomy=anatomy, size=grid, modalities=chosen, seed=seed, voxel_mm=voxel_mm,
                       misalign=parse_misalign(misalign) if misalign else (0.0, 0.0))
    start = time.perf_counter()
    write_phantom(
        out, spec, subjects, dims=dims, workers=workers, progress=lambda sid: typer.echo(f"  {sid}", err=True)
    )
    typer.echo(
        f"{subjects} {anatomy} subject(s) {'x'.join(map(str, grid))} at {spec.spacing:.2f} mm "
        f"({', '.join(chosen)}) in {time.perf_counter() - start:.1f} s → {out}"
    )
