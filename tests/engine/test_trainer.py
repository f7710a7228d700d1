"""The trainer through the real CLI and in-process: run directory, logs, GAN methods, AMP, EMA, 3D."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from medtrans.config import Config, load_config
from medtrans.data.plan import Plan
from medtrans.engine import checkpoint as ckpt
from medtrans.engine.run import load_trained
from medtrans.engine.runlog import read_metrics
from medtrans.engine.trainer import ema_update, lr_factor, train
from medtrans.errors import MedtransError

MEDTRANS = Path(sys.executable).parent / "medtrans"
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "phantom_t1_t2_regression.yaml"
TINY = ["backbone.args={depth: 2, width: 4}", "optim.batch_size=4", "optim.warmup=0", "device=cpu",
        "logging.progress=false", "logging.every=1", "validation.max_subjects=1",
        "data.splits={train: 0.34, val: 0.33, test: 0.33}"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(MEDTRANS), *args], capture_output=True, text=True, env=env, timeout=300)


def loss_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "logs" / "metrics.csv") if r["name"].startswith(("g/", "d/"))]


def test_cli_train_writes_the_run_directory(phantom_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sets = [*TINY, f"data.root={phantom_root}", "optim.steps=3", "validation.every=2", "checkpoint.every=2"]
    done = cli("train", str(RECIPE), *[a for s in sets for a in ("--set", s)], "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(run_dir)

    config = load_config(run_dir / "config.yaml")
    assert config.optim.steps == 3 and config.backbone.args == {"depth": 2, "width": 4}
    assert config.data.root == phantom_root.resolve()  # absolute: the run resumes from any directory
    assert config.optim.amp == "auto" and config.optim.ema == pytest.approx(0.995)  # the recipe's own
    plan = Plan.load(run_dir / "plan.json")
    splits = json.loads((run_dir / "splits.json").read_text())
    ids = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ids
    assert len(splits["train"]) == 2 and len(splits["val"]) == 2

    for which in ("last", "best"):
        names = sorted(p.name for p in (run_dir / "checkpoints" / which).iterdir())
        assert names == ["model.safetensors", "state.json", "state.safetensors"]
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 3 and state["total_steps"] == 3
    assert [h["step"] for h in state["history"]] == [2, 3]  # validation every 2 steps and at the end
    best = max(state["history"], key=lambda h: h["psnr"])  # the metric the recipe ranks by
    assert state["best"] == best["psnr"] and state["best_step"] == best["step"]
    assert json.loads((run_dir / "checkpoints" / "best" / "state.json").read_text())["step"] == best["step"]

    rows = loss_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["value"]) for r in rows)
    names = {r["name"] for r in read_metrics(run_dir / "logs" / "metrics.csv")}
    assert {"g/l1", "lr/g", "samples_per_s", "val/psnr", "val/ssim", "val/mae"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "logs").iterdir())
    grids = sorted((run_dir / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000003.png"]
    assert Image.open(grids[0]).size[0] > 100

    method, loaded_config, loaded_plan = load_trained(run_dir)
    assert not method.training and loaded_config == config
    assert loaded_plan.to_dict() == plan.to_dict() and plan.sources == ["t1"] and plan.target == "t2"
    weights = ckpt.load_model_weights(run_dir / "checkpoints" / "best")
    for name, value in method.state_dict().items():
        assert torch.equal(value, weights[name])
    # EMA is on in the recipe: translate-with weights differ from the raw ones kept for resuming
    _, tensors = ckpt.load_state(run_dir / "checkpoints" / "last")
    raw = ckpt.prefixed(tensors, "method")
    last = ckpt.load_model_weights(run_dir / "checkpoints" / "last")
    assert any(not torch.equal(raw[k], last[k]) for k in raw if raw[k].is_floating_point())


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    done = cli("train", str(RECIPE), "--set", "optim.lrr=0.1", "--run-dir", str(tmp_path / "x"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.lrr: unknown key" in lines[0] and str(RECIPE) in lines[0]
    assert not (tmp_path / "x").exists()
    done = cli("train", str(RECIPE), "--set", "data.root=nowhere", "--run-dir", str(tmp_path / "y"))
    assert done.returncode == 2 and "data.root is not a folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "y").exists()


def test_without_validation_subjects_last_is_used(phantom_root: Path, make_config: Callable[..., Config],
                                                  tmp_path: Path) -> None:
    config = make_config(phantom_root, **{"data.splits": {"train": 0.67, "val": 0.0, "test": 0.33},
                                          "optim.steps": 1})
    run_dir = train(config, run_dir=tmp_path / "noval")
    assert not (run_dir / "checkpoints" / "best").exists()
    method, _, _ = load_trained(run_dir, which="best")  # falls back to last
    weights = ckpt.load_model_weights(run_dir / "checkpoints" / "last")
    assert all(torch.equal(v, weights[k]) for k, v in method.state_dict().items())


def test_epochs_set_the_length(phantom_root: Path, make_config: Callable[..., Config],
                               tmp_path: Path) -> None:
    config = make_config(phantom_root, **{"optim.steps": None, "optim.epochs": 2, "data.samples_per_epoch": 8,
                                          "validation.every": None, "logging.samples": False})
    run_dir = train(config, run_dir=tmp_path / "epochs")
    rows = [r for r in read_metrics(run_dir / "logs" / "metrics.csv") if r["name"] == "g/l1"]
    assert [(r["step"], r["epoch"]) for r in rows] == [(1, 0), (2, 0), (3, 1), (4, 1)]  # 8 samples / batch 4


def test_reuses_another_runs_plan_and_splits(tiny_run: Path, phantom_root: Path,
                                             make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config(phantom_root, **{"plan.path": str(tiny_run / "plan.json"), "optim.steps": 1,
                                          "data.splits_file": str(tiny_run / "splits.json"),
                                          "data.splits": {"train": 0.5, "val": 0.25, "test": 0.25}})
    run_dir = train(config, run_dir=tmp_path / "reuse")
    splits = json.loads((run_dir / "splits.json").read_text())
    original = json.loads((tiny_run / "splits.json").read_text())
    for name in ("train", "val", "test"):
        assert splits[name] == original[name]
    assert Plan.load(run_dir / "plan.json").to_dict() == Plan.load(tiny_run / "plan.json").to_dict()


def test_refuses_to_overwrite_a_run(tiny_run: Path, make_config: Callable[..., Config],
                                    phantom_root: Path) -> None:
    with pytest.raises(MedtransError, match="already holds a trained run"):
        train(make_config(phantom_root), run_dir=tiny_run)


def test_cyclegan_unpaired_losses_finite(phantom_root: Path, make_config: Callable[..., Config],
                                         tmp_path: Path) -> None:
    config = make_config(phantom_root, **{
        "data.paired": False, "method": {"name": "cyclegan", "args": {"pool_size": 4}},
        "backbone": {"name": "resnet", "args": {"width": 4, "n_blocks": 1}},
        "discriminator": {"name": "patchgan", "args": {"n_layers": 1, "width": 4}},
        "optim.steps": 2, "validation.every": None,
    })
    run_dir = train(config, run_dir=tmp_path / "cyc")
    rows = loss_rows(run_dir)
    groups = {r["name"].split("/")[0] for r in rows}
    assert groups == {"g", "d"} and len({r["name"] for r in rows}) >= 4
    assert all(math.isfinite(r["value"]) for r in rows)
    history = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["history"]
    assert math.isfinite(history[-1]["psnr"])


def test_pix2pix_with_amp_channels_last_and_ema(phantom_root: Path, make_config: Callable[..., Config],
                                                tmp_path: Path) -> None:
    config = make_config(phantom_root, **{
        "method": {"name": "pix2pix", "args": {"lambda_l1": 10.0}},
        "discriminator": {"name": "patchgan", "args": {"n_layers": 1, "width": 4}},
        "optim.amp": True, "optim.channels_last": True, "optim.ema": 0.9, "optim.grad_clip": 1.0,
        "optim.steps": 2, "validation.every": None,
    })
    run_dir = train(config, run_dir=tmp_path / "p2p")
    rows = loss_rows(run_dir)
    assert {r["name"].split("/")[0] for r in rows} == {"g", "d"}
    assert all(math.isfinite(r["value"]) for r in rows)
    method, _, _ = load_trained(run_dir)
    source = torch.randn(1, 1, 32, 32)
    prediction, _ = method.translate(source)
    assert prediction.shape == (1, 1, 32, 32) and torch.isfinite(prediction).all()


def test_2p5d_ct_target_ranks_best_by_lowest_mae(phantom_root: Path, make_config: Callable[..., Config],
                                                 tmp_path: Path) -> None:
    config = make_config(phantom_root, **{
        "data.dims": "2.5d", "data.context": 1, "data.target": "ct", "validation.metric": "mae",
        "optim.steps": 3, "validation.every": 1, "logging.samples": False,
    })
    run_dir = train(config, run_dir=tmp_path / "ct")
    method, _, plan = load_trained(run_dir)
    assert method.in_channels == 3 and plan.target == "ct"
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert [h["step"] for h in state["history"]] == [1, 2, 3]
    assert state["best"] == min(h["mae"] for h in state["history"])
    assert not (run_dir / "samples").exists()


def test_3d_patches_and_sliding_window_validation(phantom_root: Path, make_config: Callable[..., Config],
                                                  tmp_path: Path) -> None:
    config = make_config(phantom_root, **{
        "data.dims": "3d", "data.patch_size": [16, 16, 8], "data.samples_per_epoch": 4,
        "optim.batch_size": 2, "optim.steps": 2, "validation.every": None,
    })
    run_dir = train(config, run_dir=tmp_path / "r3d")
    history = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["history"]
    assert len(history) == 1 and math.isfinite(history[0]["psnr"]) and -1 <= history[0]["ssim"] <= 1
    method, config, _ = load_trained(run_dir)
    assert method.spatial_dims == 3


def test_lr_schedules_analytic() -> None:
    base = {"data": {"root": ".", "sources": ["t1"], "target": "t2"}, "backbone": {"name": "unet"},
            "method": {"name": "regression"}}
    cosine = Config.model_validate({**base, "optim": {"steps": 12, "schedule": "cosine", "warmup": 2,
                                                      "min_lr_ratio": 0.1}}).optim
    f = lr_factor(cosine, 12)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(12) == pytest.approx(0.1)
    step = Config.model_validate({**base, "optim": {"steps": 12, "schedule": "step", "step_size": 4,
                                                    "gamma": 0.5}}).optim
    g = lr_factor(step, 12)
    assert [g(0), g(3), g(4), g(8), g(11)] == [1.0, 1.0, 0.5, 0.25, 0.25]


def test_ema_decay_ramps_up() -> None:
    update = ema_update(0.99)
    averaged = [torch.zeros(2), torch.zeros(1, dtype=torch.long)]
    current = [torch.ones(2), torch.full((1,), 5)]
    update(averaged, current, torch.tensor(1))  # decay min(0.99, 2/11): the average moves 9/11 of the way
    assert torch.allclose(averaged[0], torch.full((2,), 9 / 11)) and averaged[1].item() == 5
    averaged[0].zero_()
    update(averaged, current, torch.tensor(10_000))  # ramp finished: the configured decay
    assert torch.allclose(averaged[0], torch.full((2,), 0.01))
