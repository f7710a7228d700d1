"""Resume is exact: 6 uninterrupted steps equal 4 steps + resume for 2 (losses and every tensor)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medtrans.config import Config
from medtrans.engine.runlog import read_metrics
from medtrans.engine.trainer import train
from medtrans.errors import MedtransError

MEDTRANS = Path(sys.executable).parent / "medtrans"

# two optimiser groups (GAN alternation), dropout (torch RNG), EMA, cosine warm-up, an epoch boundary
# crossed (12 samples / batch 4 = 3 steps per epoch) and a stop in the middle of epoch 1
EXACT = {
    "deterministic": True, "optim.steps": 6, "optim.schedule": "cosine", "optim.warmup": 2,
    "optim.ema": 0.8, "optim.grad_clip": 0.5, "data.samples_per_epoch": 12,
    "backbone.args": {"depth": 2, "width": 4, "dropout": 0.2},
    "method": {"name": "pix2pix", "args": {"lambda_l1": 10.0}},
    "discriminator": {"name": "patchgan", "args": {"n_layers": 1, "width": 4}},
    "validation.every": 2, "checkpoint.every": 100,
}


def test_stop_and_resume_matches_uninterrupted(phantom_root: Path, make_config: Callable[..., Config],
                                               tmp_path: Path) -> None:
    config = make_config(phantom_root, **EXACT)
    whole = train(config, run_dir=tmp_path / "whole")
    parted = train(config, run_dir=tmp_path / "parted", stop_after=4)
    assert load_file(parted / "checkpoints" / "last" / "model.safetensors") != {}
    done = subprocess.run([str(MEDTRANS), "train", "--resume", str(parted)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr

    def logged(run: Path) -> list[tuple[int, str, float]]:
        rows = read_metrics(run / "logs" / "metrics.csv")
        return [(r["step"], r["name"], r["value"]) for r in rows if r["name"] != "samples_per_s"]

    assert logged(parted) == logged(whole)
    assert {s for s, name, _ in logged(whole) if name == "g/l1"} == set(range(1, 7))
    for name in ("model.safetensors", "state.safetensors"):
        a = load_file(whole / "checkpoints" / "last" / name)
        b = load_file(parted / "checkpoints" / "last" / name)
        assert a.keys() == b.keys() and len(a) > 10
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert (whole / "checkpoints" / "last" / "state.json").read_text() == \
        (parted / "checkpoints" / "last" / "state.json").read_text()


def test_resume_refuses_a_changed_training_config(tiny_run: Path, make_config: Callable[..., Config],
                                                  phantom_root: Path) -> None:
    changed = make_config(phantom_root, **{"optim.lr": 0.5, "optim.steps": 8})
    with pytest.raises(MedtransError, match=r"differs from the run's in optim\.lr"):
        train(changed, resume=tiny_run)


def test_resume_extends_a_finished_run(phantom_root: Path, make_config: Callable[..., Config],
                                       tmp_path: Path) -> None:
    run = train(make_config(phantom_root, **{"optim.steps": 2}), run_dir=tmp_path / "short")
    train(make_config(phantom_root, **{"optim.steps": 3}), resume=run)
    steps = [r["step"] for r in read_metrics(run / "logs" / "metrics.csv") if r["name"] == "g/l1"]
    assert steps == [1, 2, 3]


def test_ctrl_c_stops_after_the_step_and_writes_last(phantom_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "interrupted"
    recipe = Path(__file__).resolve().parents[2] / "configs" / "phantom_t1_t2_regression.yaml"
    sets = [f"data.root={phantom_root}", "backbone.args={depth: 2, width: 4}", "optim.batch_size=4",
            "optim.steps=500", "optim.amp=false", "device=cpu", "logging.every=1", "logging.progress=false",
            "logging.tensorboard=false", "validation.every=null",
            "data.splits={train: 0.34, val: 0.33, test: 0.33}"]
    command = [str(MEDTRANS), "train", str(recipe), *[a for s in sets for a in ("--set", s)],
               "--run-dir", str(run)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run / "logs" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and "g/l1" in metrics.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training ended or stalled before its first step: {proc.communicate()[1]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # so `train && predict` does not go on with a part-trained model
    assert "interrupted after step" in err and "--resume" in err
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    logged = [r["step"] for r in read_metrics(metrics) if r["name"] == "g/l1"]
    assert 1 <= state["step"] < 500 and logged == list(range(1, state["step"] + 1))
