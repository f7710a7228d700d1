"""``medtrans benchmark``: every entry of a SPEC on one split and budget, one leaderboard, one report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from medtrans.cli import app


@app.command("benchmark")
def benchmark(
    spec: Path = typer.Argument(..., help="Benchmark SPEC (YAML): data, entries (or all), budget, seeds, "
                                "inference, preset; see configs/benchmark_phantom.yaml."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (runs/, entries/, leaderboard.csv/"
                             ".json, report.html). A re-run skips finished entries and resumes the others."),
    entry: list[str] = typer.Option(None, "--entry", help="Run only this entry of the SPEC (repeatable; "
                                    "list an entry's stage 1 too); the leaderboard ranks these and the "
                                    "baselines."),
) -> None:
    """Train, translate and evaluate every entry with the same data, split, budget and code; rank them.

    Example: medtrans benchmark configs/benchmark_phantom.yaml -o runs/benchmark
    """
    from medtrans.engine.benchmark import run_benchmark

    console = Console(stderr=True)
    start = time.perf_counter()
    records = run_benchmark(spec, out, progress=lambda key: console.print(f"entry {key} …", highlight=False),
                            only=entry or None)
    failed = {k: r for k, r in records.items() if r.get("status") != "done"}
    for key, record in failed.items():
        console.print(f"[red]entry {key} failed:[/] {record.get('error')}", highlight=False)
    console.print(f"{len(records) - len(failed)} of {len(records)} entries done in "
                  f"{time.perf_counter() - start:.0f} s → {out / 'leaderboard.csv'}, {out / 'report.html'}")
    typer.echo(str(out / "leaderboard.csv"))
    if failed:
        raise typer.Exit(1)
