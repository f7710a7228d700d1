"""Shared engine fixtures: a tiny phantom (6 subjects, 32×32×8, t1/t2/ct) and a tiny trained run.

``tiny_run`` is a 2D T1→T2 regression U-Net trained 4 steps through ``engine.trainer.train``; predictor,
evaluator and report tests translate with it. ``make_config(root, **dotted_overrides)`` builds a
validated Config for these data (``make_config(root, **{"optim.steps": 3})``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from medtrans.config import Config, validate_config
from medtrans.data.phantom import PhantomSpec, write_phantom

PHANTOM_SIZE = (32, 32, 8)
PHANTOM_SUBJECTS = 6  # 2 train, 2 val, 2 test with the splits below


def tiny_raw(root: Path) -> dict[str, Any]:
    return {
        "name": "tiny",
        "data": {"root": str(root), "sources": ["t1"], "target": "t2", "dims": "2d",
                 "splits": {"train": 0.34, "val": 0.33, "test": 0.33}},
        "backbone": {"name": "unet", "args": {"depth": 2, "width": 4}},
        "method": {"name": "regression", "args": {"loss": "l1"}},
        "optim": {"steps": 4, "batch_size": 4, "lr": 1.0e-3},
        "device": "cpu",
        "logging": {"every": 1, "progress": False, "tensorboard": True},
        "validation": {"every": 2, "max_subjects": 2},
        "checkpoint": {"every": 2},
    }


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny brain phantom in the generic layout: <root>/sub-00N/{t1,t2,ct,mask}.nii.gz."""
    root = tmp_path_factory.mktemp("phantom")
    spec = PhantomSpec(anatomy="brain", size=PHANTOM_SIZE, modalities=("t1", "t2", "ct"), seed=0)
    return write_phantom(root, spec, subjects=PHANTOM_SUBJECTS)


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Config]:
    def make(root: Path, **overrides: Any) -> Config:
        raw = tiny_raw(root)
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        return validate_config(raw)

    return make


@pytest.fixture(scope="session")
def tiny_run(phantom_root: Path, make_config: Callable[..., Config],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run directory (config, plan, splits, checkpoints/{last,best}, logs, samples)."""
    from medtrans.engine.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    return train(make_config(phantom_root), run_dir=run_dir)


# ------------------------------------------------------------------ benchmark (tests of it and of the page)
TINY = {"backbone": {"name": "unet", "args": {"depth": 2, "width": 4}}}


def write_spec(folder: Path, root: Path, entries: list[tuple[str, ...]], steps: int,
               baselines: bool = False) -> Path:
    """A benchmark SPEC on ``root``; each entry ``(name, recipe, *--set lines)`` with a tiny U-Net."""
    spec = {"name": "tiny", "device": "cpu", "baselines": baselines,
            "data": {"root": str(root), "sources": ["t1"], "target": "t2", "dims": "2d",
                     "splits": {"train": 0.34, "val": 0.16, "test": 0.5}},  # 6 subjects: 2 / 1 / 3
            "entries": [{"name": name, "recipe": recipe, **TINY, "set": ["validation.max_slices=2", *sets]}
                        for name, recipe, *sets in entries],
            "budget": {"steps": steps, "batch_size": 4}, "inference": {"samples": 2, "steps": 2}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="session")
def benchmark_spec() -> Callable[..., Path]:
    return write_spec


@pytest.fixture(scope="session")
def one_thread() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:  # benchmark entries' child processes inherit it
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 brains of 32×32×12 (T1, T2): 12 slices leave room for the 3D SSIM's 11-voxel window."""
    spec = PhantomSpec(anatomy="brain", size=(32, 32, 12), modalities=("t1", "t2"), seed=3)
    return write_phantom(tmp_path_factory.mktemp("bench_phantom"), spec, subjects=6)


@pytest.fixture(scope="session")
def two_entries(bench_root: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """regression and flow, 2 steps each, benchmarked by ``medtrans benchmark``."""
    folder = tmp_path_factory.mktemp("bench")
    spec = write_spec(folder, bench_root, [("regression", "phantom_t1_t2_regression.yaml"),
                                           ("flow", "phantom_t1_t2_flow.yaml")], steps=2)
    from medtrans.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["benchmark", str(spec), "-o", str(folder / "out")])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return folder / "out"
