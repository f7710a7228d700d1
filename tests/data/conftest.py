"""Shared fixtures: tiny phantom datasets written once per session, and a CLI runner."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medtrans.data.phantom import PhantomSpec, write_phantom


@pytest.fixture(scope="session")
def brain2d(tmp_path_factory) -> Path:
    """Four 2D brain subjects at 128² (1.9 mm): fine enough for tissue contrasts, fast to simulate."""
    out = tmp_path_factory.mktemp("brain2d")
    write_phantom(out, PhantomSpec(anatomy="brain", size=(128, 128, 1), seed=3), 4, dims=2)
    return out


@pytest.fixture(scope="session")
def tiny3d(tmp_path_factory) -> Path:
    """Three small 3D brain subjects (32×32×16) with the modalities the pipeline tests use."""
    out = tmp_path_factory.mktemp("tiny3d")
    spec = PhantomSpec(
        anatomy="brain", size=(32, 32, 16), modalities=("t1", "t2", "ct", "pet", "ldpet"), seed=1
    )
    write_phantom(out, spec, 3, dims=3)
    return out


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``medtrans ARGS`` in-process through the console entry point; returns (exit code, out, err)."""
    from medtrans.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["medtrans", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
