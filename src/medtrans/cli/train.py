"""``medtrans train``: train any method from a YAML recipe into a run directory, or resume one."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medtrans.cli import app


@app.command("train")
def train(
    config: Path = typer.Argument(None, help="YAML recipe (see configs/); optional with --resume, which "
                                  "then uses the run's own config.yaml."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set optim.lr=1e-3 "
                                        "(value parsed as YAML; repeatable)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run folder to create (default: "
                                 "<runs_dir>/<name>-<date>-<time>)."),
    resume: Path = typer.Option(None, "--resume", help="Continue this run from its checkpoints/last, exactly "
                                "where it stopped."),
    stop_after: int = typer.Option(None, "--stop-after", min=1, help="End this session after N steps (write "
                                   "checkpoints/last; continue later with --resume)."),
) -> None:
    """Train a translation model; writes config, plan, splits, checkpoints, logs and sample grids.

    Example: medtrans train configs/phantom_t1_t2_regression.yaml --set optim.steps=200 --run-dir runs/t1t2
    """
    from medtrans.config import load_config
    from medtrans.engine.run import CONFIG_FILE
    from medtrans.engine.trainer import train as run_training
    from medtrans.errors import MedtransError

    if resume is not None and not (resume / CONFIG_FILE).is_file():
        raise MedtransError(resume, f"not a run folder (no {CONFIG_FILE})",
                            "give --resume the folder medtrans train wrote (it holds config.yaml and "
                            "checkpoints/)")
    if config is None:
        if resume is None:
            raise MedtransError(None, "no config given", "medtrans train CONFIG.yaml, or --resume RUN_DIR")
        config = resume / CONFIG_FILE
    if resume is not None and run_dir is not None:
        raise MedtransError(run_dir, "--run-dir and --resume both given", "--resume continues the run in its "
                            "own folder; drop --run-dir")
    cfg = load_config(config, overrides)
    try:
        folder = run_training(cfg, run_dir=run_dir, resume=resume, stop_after=stop_after)
    except KeyboardInterrupt:  # checkpoints/last is written: the shell must not go on as if finished
        raise typer.Exit(130) from None
    console = Console(stderr=True)
    best = folder / "checkpoints" / "best"
    console.print(f"run: {folder}")
    console.print(f"checkpoints: {best if best.exists() else folder / 'checkpoints' / 'last'}")
    console.print(f"logs: {folder / 'logs' / 'metrics.csv'} (tensorboard --logdir {folder / 'logs'})")
    typer.echo(str(folder))
