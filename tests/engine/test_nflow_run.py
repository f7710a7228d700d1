"""The normalizing flow through the real engine: CLI train → predict --samples 3 → evaluate, and exact
resume (which also shows ActNorm's data-dependent init is restored, not redone, from the checkpoint)."""

from __future__ import annotations

import json
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

NFLOW = {"method": {"name": "nflow", "args": {"levels": 2, "depth": 2, "hidden": 8, "cond_channels": 4}},
         "backbone.args": {"depth": 1, "width": 4}, "logging.tensorboard": False}


def cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def test_cli_train_predict_three_samples_evaluate(make_config: Callable[..., Config], tmp_path: Path) -> None:
    phantom_root = tmp_path / "data"  # 12 slices: evaluate's 3D SSIM window needs 11
    cli("phantom", phantom_root, "--subjects", 3, "--size", "32x32x12", "--modalities", "t1,t2", "--seed", 3,
        "--workers", 1)
    recipe = tmp_path / "nflow.yaml"
    recipe.write_text(yaml.safe_dump(make_config(phantom_root, **NFLOW, **{"optim.steps": 3}).to_dict()))
    run = tmp_path / "run"
    cli("train", recipe, "--run-dir", run)
    assert {r["name"] for r in read_metrics(run / "logs" / "metrics.csv")} >= {"g/nll_bpd"}
    test = json.loads((run / "splits.json").read_text())["test"]
    cli("predict", run, *(phantom_root / s for s in test), "-o", tmp_path / "pred", "--samples", 3,
        "--seed", 4, "--checkpoint", "last", "--device", "cpu")
    for s in test:
        mean = np.asarray(nib.load(tmp_path / "pred" / f"{s}.nii.gz").dataobj)
        std = np.asarray(nib.load(tmp_path / "pred" / f"{s}_t2_std.nii.gz").dataobj)
        assert mean.shape == std.shape and np.isfinite(mean).all() and std.min() >= 0 and std.max() > 0
    cli("evaluate", tmp_path / "pred", phantom_root, "--ref-modality", "t2", "-o", run / "eval")
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert "psnr" in json.dumps(summary)


def test_resume_is_exact_and_keeps_the_actnorm_init(phantom_root: Path, make_config: Callable[..., Config],
                                                    tmp_path: Path) -> None:
    config = make_config(phantom_root, **NFLOW, **{"deterministic": True, "optim.steps": 4,
                                                    "optim.ema": 0.8, "validation.every": 2,
                                                    "checkpoint.every": 100})
    whole = train(config, run_dir=tmp_path / "whole")
    parted = train(config, run_dir=tmp_path / "parted", stop_after=2)
    train(config, resume=parted)

    def logged(run: Path) -> list[tuple[int, str, float]]:
        rows = read_metrics(run / "logs" / "metrics.csv")
        return [(r["step"], r["name"], r["value"]) for r in rows if r["name"] != "samples_per_s"]

    assert logged(parted) == logged(whole)
    a = load_file(whole / "checkpoints" / "last" / "model.safetensors")
    b = load_file(parted / "checkpoints" / "last" / "model.safetensors")
    flags = [k for k in a if k.endswith("initialized")]
    assert len(flags) == 4 and all(bool(a[k]) for k in flags)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
