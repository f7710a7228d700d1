"""The ``medtrans`` command line: one command per stage, each defined in its own module here."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer
from rich.console import Console

from medtrans.errors import MedtransError

app = typer.Typer(
    name="medtrans",
    help="Medical image translation that keeps scanner geometry: phantom, info, plan, train, predict, "
    "evaluate, report, demo, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)
_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _DEBUG["on"] = debug


def _register() -> None:
    """Each stage lives in its own module here and adds itself to ``app`` on import."""
    import medtrans.cli as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"medtrans.cli.{module.name}")


def main() -> None:
    """Console entry point: bad input gives one line on stderr and exit code 2."""
    _register()
    try:
        app()
    except MedtransError as err:
        if _DEBUG["on"] or "--debug" in sys.argv:
            raise
        # under torchrun (WORLD_SIZE > 1) the line names the rank, and the exit skips gloo's destructors
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        prefix = f"rank {os.environ.get('RANK', '0')}/{os.environ['WORLD_SIZE']}: " if launched else ""
        err_console.print(f"[bold red]{prefix}error:[/] {err}", soft_wrap=True, highlight=False)
        if launched:
            from medtrans.engine.distributed import finish

            finish(2)
        sys.exit(2)
