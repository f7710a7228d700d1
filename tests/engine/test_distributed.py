"""Training and prediction with several processes (torchrun, gloo on CPU) against one process.

Four launches of a 2-process pix2pix run (two optimiser groups, EMA, gradient clipping, a cosine
warm-up and an epoch boundary): torchrun ``-m medtrans`` for 6 steps; ``medtrans train --nproc 2``
for 4 steps; a resume of that run for the last 2 as two "nodes" on 127.0.0.1 (c10d rendezvous).
The first equals one process with the same global batch to float tolerance, the resumed one equals the
first exactly, and only rank 0 wrote files. A fourth launch predicts with 2 processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medtrans.config import Config, dump_config
from medtrans.engine import distributed
from medtrans.engine.runlog import read_metrics
from medtrans.engine.trainer import train
from medtrans.errors import MedtransError

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

GAN = {
    "deterministic": True, "optim.steps": 6, "optim.schedule": "cosine", "optim.warmup": 2,
    "optim.ema": 0.8, "optim.grad_clip": 0.5, "data.samples_per_epoch": 12, "optim.batch_size": 4,
    "method": {"name": "pix2pix", "args": {"lambda_l1": 10.0}},
    "discriminator": {"name": "patchgan", "args": {"n_layers": 1, "width": 4}},
    "validation.every": 3, "checkpoint.every": 100, "logging.every": 1,
}
#: one process averages the loss over 4 samples, two average two means of 2: equal up to float rounding,
#: which Adam's normalisation carries into the weights over 6 steps
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def torchrun(*args: str) -> list[str]:
    return ["-m", "torch.distributed.run", *args, "-m", "medtrans"]


def losses(run_dir: Path) -> dict[tuple[int, str], float]:
    rows = read_metrics(run_dir / "logs" / "metrics.csv")
    return {(r["step"], r["name"]): r["value"] for r in rows if r["name"] != "samples_per_s"}


def weights(run_dir: Path, name: str = "state.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "last" / name)


@pytest.fixture(scope="module")
def recipe(phantom_root: Path, make_config: Callable[..., Config], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Config, Path]:
    config = make_config(phantom_root, **GAN)
    path = tmp_path_factory.mktemp("ddp") / "pix2pix.yaml"
    dump_config(config, path)
    return config, path


@pytest.fixture(scope="module")
def ddp_run(recipe: tuple[Config, Path]) -> Path:
    """6 steps with ``torchrun --standalone --nproc_per_node 2 -m medtrans train``."""
    folder = recipe[1].parent / "ddp"
    run(*torchrun("--standalone", "--nproc_per_node", "2"), "train", str(recipe[1]), "--run-dir", str(folder))
    return folder


def test_two_processes_equal_one_with_the_same_global_batch(recipe: tuple[Config, Path], ddp_run: Path,
                                                           tmp_path: Path) -> None:
    single = train(recipe[0], run_dir=tmp_path / "single")
    one, two = losses(single), losses(ddp_run)
    assert one.keys() == two.keys() and {s for s, _ in one} == set(range(1, 7))
    assert ("val/psnr", 6) in {(n, s) for s, n in one}
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=TOLERANCE, abs=TOLERANCE), key
    a, b = weights(single), weights(ddp_run)
    assert a.keys() == b.keys() and any(k.startswith("optim.d") for k in a)
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=TOLERANCE, atol=TOLERANCE, msg=key)


def test_only_rank_zero_writes(ddp_run: Path) -> None:
    # a second writer would leave a second events file and every metrics row twice
    assert len(list((ddp_run / "logs").glob("events.out.tfevents.*"))) == 1
    rows = read_metrics(ddp_run / "logs" / "metrics.csv")
    keys = [(r["step"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert sorted(p.name for p in (ddp_run / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["best", "last"]
    assert sorted(p.name for p in ddp_run.iterdir()) == ["cache", "checkpoints", "config.yaml", "logs",
                                                          "plan.json", "samples", "splits.json"]


@pytest.fixture(scope="module")
def parted_run(recipe: tuple[Config, Path]) -> Path:
    """The same run stopped after 4 steps, with ``medtrans train --nproc 2``."""
    folder = recipe[1].parent / "parted"
    run("-m", "medtrans", "train", str(recipe[1]), "--run-dir", str(folder), "--stop-after", "4",
        "--nproc", "2")
    return folder


def test_nproc_shortcut_stops_after_four_steps(parted_run: Path, ddp_run: Path) -> None:
    four = {k: v for k, v in losses(ddp_run).items() if k[0] <= 4}
    assert losses(parted_run) == four
    assert load_file(parted_run / "checkpoints" / "last" / "state.safetensors") != {}


def test_resume_as_two_nodes_is_exact(parted_run: Path, ddp_run: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    node = torchrun("--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", endpoint, "--rdzv-id", "resume")
    nodes = [subprocess.Popen([sys.executable, *node, "train", "--resume", str(parted_run)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    for agent in nodes:
        _, err = agent.communicate(timeout=240)
        assert agent.returncode == 0, err[-4000:]
    assert losses(parted_run) == losses(ddp_run)
    for name in ("model.safetensors", "state.safetensors"):
        a, b = weights(ddp_run, name), weights(parted_run, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_ranks_take_consecutive_shares_of_each_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = []
    for r in (0, 1):
        monkeypatch.setenv("RANK", str(r))
        shares.append(distributed.shard_indices(1, 3, 4))
    assert shares == [[4, 5, 8, 9], [6, 7, 10, 11]]
    with pytest.raises(MedtransError, match="batch_size 6 is not divisible by the 4 processes"):
        distributed.per_rank_batch(6, world=4)


def test_sharded_prediction_equals_one_process(tiny_run: Path, phantom_root: Path, tmp_path: Path) -> None:
    import nibabel as nib

    from medtrans.engine.predictor import Predictor

    subjects = [str(p) for p in sorted(phantom_root.glob("sub-*"))]
    Predictor.from_run(tiny_run, device="cpu").predict_paths(subjects, tmp_path / "one")
    run("-m", "medtrans", "predict", str(tiny_run), *subjects, "-o", str(tmp_path / "two"), "--device", "cpu",
        "--nproc", "2")
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == len(subjects) and names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        a, b = nib.load(tmp_path / "one" / name), nib.load(tmp_path / "two" / name)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), name
        assert np.array_equal(a.affine, b.affine)
