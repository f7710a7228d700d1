"""SynDiff runs end to end: exact resume of the unpaired 8-network run, and the real CLI with std maps."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from medtrans.cli import _register, app
from medtrans.config import Config
from medtrans.engine.runlog import read_metrics
from medtrans.engine.trainer import train

_register()

TINY = {
    "backbone.args": {"depth": 2, "width": 4, "time_dim": 16},
    "discriminator": {"name": "timed_patchgan", "args": {"n_layers": 1, "width": 4, "time_dim": 16}},
}
CYCLE = {"cycle_backbone": {"name": "resnet", "width": 4, "n_blocks": 1, "n_down": 1},
         "cycle_discriminator": {"name": "patchgan", "n_layers": 1, "width": 4}}


def test_unpaired_resume_is_exact(phantom_root: Path, make_config: Callable[..., Config],
                                  tmp_path: Path) -> None:
    config = make_config(phantom_root, **TINY, **{
        "method": {"name": "syndiff", "args": {"paired": False, "nz": 8, "r1_every": 2, **CYCLE}},
        "data.paired": False, "deterministic": True, "optim.steps": 5, "optim.ema": 0.9,
        "data.samples_per_epoch": 8, "validation.every": 2, "validation.max_slices": 2,
        "checkpoint.every": 100, "logging.tensorboard": False})
    whole = train(config, run_dir=tmp_path / "whole")
    parted = train(config, run_dir=tmp_path / "parted", stop_after=3)
    train(config, resume=parted)

    def logged(run: Path) -> list[tuple[int, str, float]]:
        return [(r["step"], r["name"], r["value"]) for r in read_metrics(run / "logs" / "metrics.csv")
                if r["name"] != "samples_per_s"]

    rows = logged(whole)
    assert rows == logged(parted)
    assert {s for s, n, _ in rows if n == "d/r1_b"} == {1, 3, 5}  # lazy R1 at steps 0, 2, 4 (0-based)
    assert any(n == "val/psnr" for _, n, _ in rows)
    a = load_file(whole / "checkpoints" / "last" / "model.safetensors")
    b = load_file(parted / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} >= {
        "diffusive_b", "diffusive_a", "g_ab", "g_ba", "disc_a", "disc_b", "cycle_disc_a", "cycle_disc_b"}
    for key in a:
        assert torch.equal(a[key], b[key]), key


def cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def test_cli_trains_predicts_three_samples_and_evaluates(make_config: Callable[..., Config],
                                                          tmp_path: Path) -> None:
    data = tmp_path / "data"  # 12 slices: the default preset's 3D SSIM needs 11 voxels an axis
    cli("phantom", data, "--subjects", 5, "--size", "32x32x12", "--modalities", "t1,t2", "--seed", 3,
        "--workers", 1)
    config = make_config(data, **TINY, **{
        "method": {"name": "syndiff", "args": {"nz": 8}}, "optim.steps": 2, "validation.every": 2,
        "validation.max_slices": 2, "logging.tensorboard": False,
        "data.splits": {"train": 0.4, "val": 0.2, "test": 0.4}})
    recipe = tmp_path / "syndiff.yaml"
    recipe.write_text(yaml.safe_dump(config.to_dict()))
    run = tmp_path / "run"
    cli("train", recipe, "--run-dir", run)
    out = tmp_path / "pred"
    cli("predict", run, data / "sub-000", "-o", out, "--samples", 3, "--seed", 1, "--checkpoint", "last",
        "--device", "cpu")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["sub-000.nii.gz", "sub-000_t2_std.nii.gz"]
    std = np.asarray(nib.load(str(out / "sub-000_t2_std.nii.gz")).dataobj)
    assert std.shape == nib.load(str(data / "sub-000" / "t1.nii.gz")).shape and float(std.max()) > 0
    result = CliRunner().invoke(app, ["predict", str(run), str(data / "sub-000"), "-o", str(tmp_path / "p2"),
                                      "--steps", "2", "--device", "cpu"])
    assert result.exit_code != 0 and "exactly 4 steps" in str(result.exception)
    cli("evaluate", out, data, "-o", tmp_path / "eval")
    with open(tmp_path / "eval" / "per_subject.csv") as f:
        row = next(csv.DictReader(f))
    for column in ("psnr", "std_spearman"):
        assert np.isfinite(float(row[column])), column
