"""Diffusion and flow runs end to end: exact resume, and the real CLI from training to calibrated std maps."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from medtrans.cli import _register, app
from medtrans.config import Config
from medtrans.engine.runlog import read_metrics
from medtrans.engine.trainer import train
from medtrans.io import load

_register()

SAMPLERS = {
    "ddpm": {"method": {"name": "ddpm", "args": {"timesteps": 100, "steps": 3}}},
    "flow": {"method": {"name": "flow", "args": {"steps": 3, "solver": "heun"}}},
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_resume_is_exact_for_sampling_methods(name: str, phantom_root: Path,
                                              make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config(phantom_root, **SAMPLERS[name], **{
        "deterministic": True, "optim.steps": 5, "optim.ema": 0.9, "data.samples_per_epoch": 8,
        "validation.every": 2, "validation.max_slices": 3, "checkpoint.every": 100,
        "logging.tensorboard": False})
    whole = train(config, run_dir=tmp_path / "whole")
    parted = train(config, run_dir=tmp_path / "parted", stop_after=3)
    train(config, resume=parted)

    def logged(run: Path) -> list[tuple[int, str, float]]:
        return [(r["step"], r["name"], r["value"]) for r in read_metrics(run / "logs" / "metrics.csv")
                if r["name"] != "samples_per_s"]

    assert logged(parted) == logged(whole)
    assert any(n == "val/psnr" for _, n, _ in logged(whole))  # validation sampled (on 3 slices)
    a = load_file(whole / "checkpoints" / "last" / "model.safetensors")
    b = load_file(parted / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and any("schedule" in k for k in a)  # the process travels with weights
    for key in a:
        assert torch.equal(a[key], b[key]), key


def cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_cli_trains_samples_reproducibly_and_evaluates_calibration(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    phantom_root = tmp_path / "data"  # 12 slices: the default preset's 3D SSIM needs 11 voxels an axis
    cli("phantom", phantom_root, "--subjects", 5, "--size", "32x32x12", "--modalities", "t1,t2", "--seed", 3,
        "--workers", 1)
    for name in sorted(SAMPLERS):
        recipe = tmp_path / f"{name}.yaml"
        config = make_config(phantom_root, **SAMPLERS[name], **{
            "optim.steps": 2, "validation.every": 2, "validation.max_slices": 2,
            "logging.tensorboard": False, "data.splits": {"train": 0.4, "val": 0.2, "test": 0.4}})
        recipe.write_text(yaml.safe_dump(config.to_dict()))
        run = tmp_path / f"run-{name}"
        cli("train", recipe, "--run-dir", run)
        subject = phantom_root / "sub-000"  # a test subject
        outs = []
        for attempt in ("a", "b"):
            out = tmp_path / f"pred-{name}-{attempt}"
            cli("predict", run, subject, "-o", out, "--steps", 2, "--samples", 3, "--seed", 1,
                "--checkpoint", "last", "--device", "cpu")
            outs.append(_arrays(out))
        assert sorted(outs[0]) == ["sub-000.nii.gz", "sub-000_t2_std.nii.gz"]
        for key in outs[0]:  # same seed, same files
            np.testing.assert_array_equal(outs[0][key], outs[1][key])
        std = load(tmp_path / f"pred-{name}-a" / "sub-000_t2_std.nii.gz")
        assert std.meta.get("synthetic") and float(std.array.max()) > 0
        assert std.shape == load(subject / "t1.nii.gz").shape
        cli("evaluate", tmp_path / f"pred-{name}-a", phantom_root, "-o", tmp_path / f"eval-{name}")
        with open(tmp_path / f"eval-{name}" / "per_subject.csv") as f:
            row = next(csv.DictReader(f))
        for column in ("std_spearman", "std_ause", "std_ratio"):
            assert np.isfinite(float(row[column])), column


def test_one_pass_runs_refuse_a_step_count(tiny_run: Path, phantom_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(tiny_run), str(phantom_root / "sub-005"), "-o",
                                      str(tmp_path / "p"), "--steps", "4"])
    assert result.exit_code != 0
    assert "translates in one network pass" in str(result.exception)
    assert not (tmp_path / "p").exists()
