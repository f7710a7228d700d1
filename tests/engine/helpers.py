"""What the engine's end-to-end tests share: the CLI in-process, logged losses, checkpoint equality."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from medtrans.cli import _register, app
from medtrans.engine.runlog import read_metrics

_register()


def cli(*args: object) -> str:
    """``medtrans ARGS`` in this process; fails the test with the output when it exits non-zero."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def logged(run: Path) -> list[tuple[int, str, float]]:
    """(step, name, value) of every logged scalar but the (timing-dependent) throughput."""
    return [(r["step"], r["name"], r["value"]) for r in read_metrics(run / "logs" / "metrics.csv")
            if r["name"] != "samples_per_s"]


def assert_same_checkpoint(a: Path, b: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """Every tensor of ``checkpoints/last/<name>`` of runs ``a`` and ``b`` equal; returns ``a``'s."""
    left = load_file(a / "checkpoints" / "last" / name)
    right = load_file(b / "checkpoints" / "last" / name)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key
    return left
