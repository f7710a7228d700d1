"""The normalizing flow through the real engine: CLI train → predict --samples 3 → evaluate, and exact
resume (which also shows ActNorm's data-dependent init is restored, not redone, from the checkpoint)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from tests.engine.helpers import assert_same_checkpoint, cli, logged

from medtrans.cli import _register
from medtrans.config import Config
from medtrans.engine.runlog import read_metrics
from medtrans.engine.trainer import train

_register()

NFLOW = {"method": {"name": "nflow", "args": {"levels": 2, "depth": 2, "hidden": 8, "cond_channels": 4}},
         "backbone.args": {"depth": 1, "width": 4}, "logging.tensorboard": False}


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

    assert logged(parted) == logged(whole)
    a = assert_same_checkpoint(whole, parted)
    flags = [k for k in a if k.endswith("initialized")]
    assert len(flags) == 4 and all(bool(a[k]) for k in flags)
