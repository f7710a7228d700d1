"""cVAE and UNIT runs end to end: exact resume through the trainer, and the real CLI with std maps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.engine.helpers import cli, logged

from medtrans.cli import _register
from medtrans.config import Config
from medtrans.data.phantom import PhantomSpec, write_phantom
from medtrans.engine.trainer import train

_register()

RUNS = {
    "cvae": {"backbone.args": {"depth": 2, "width": 4, "time_dim": 16},
             "method": {"name": "cvae", "args": {"z_dim": 4, "kl_warmup": 3, "encoder": {"width": 4}}}},
    "unit": {"backbone": {"name": "resnet", "args": {"width": 4, "n_blocks": 2, "n_down": 1}},
             "method": {"name": "unit", "args": {"pool_size": 2}}, "data.paired": False,
             "discriminator": {"name": "patchgan", "args": {"n_layers": 1, "width": 4}}},
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_resume_is_exact(name: str, phantom_root: Path, make_config: Callable[..., Config],
                         tmp_path: Path) -> None:
    config = make_config(phantom_root, **RUNS[name], **{
        "deterministic": True, "optim.steps": 4, "optim.ema": 0.9, "data.samples_per_epoch": 8,
        "validation.every": 2, "validation.max_slices": 2, "checkpoint.every": 100,
        "logging.tensorboard": False})
    whole = train(config, run_dir=tmp_path / "whole")
    parted = train(config, run_dir=tmp_path / "parted", stop_after=3)
    train(config, resume=parted)

    rows = logged(whole)
    assert rows == logged(parted) and any(n == "val/psnr" for _, n, _ in rows)
    if name == "cvae":
        assert {n for _, n, _ in rows} >= {f"g/kl_dim_{d:02d}" for d in range(4)}
    a = load_file(whole / "checkpoints" / "last" / "model.safetensors")
    b = load_file(parted / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def tall_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 slices: the evaluator's 3D SSIM needs 11 voxels an axis."""
    spec = PhantomSpec(anatomy="brain", size=(32, 32, 12), modalities=("t1", "t2"), seed=3)
    return write_phantom(tmp_path_factory.mktemp("tall"), spec, subjects=5)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_cli_trains_predicts_three_samples_and_evaluates(name: str, tall_phantom: Path,
                                                          make_config: Callable[..., Config],
                                                          tmp_path: Path) -> None:
    config = make_config(tall_phantom, **RUNS[name], **{
        "optim.steps": 2, "validation.every": 2, "validation.max_slices": 2, "logging.tensorboard": False,
        "data.splits": {"train": 0.4, "val": 0.2, "test": 0.4}})
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(config.to_dict()))
    run = tmp_path / "run"
    cli("train", recipe, "--run-dir", run)
    out = tmp_path / "pred"
    subject = tall_phantom / "sub-000"
    cli("predict", run, subject, "-o", out, "--samples", 3, "--seed", 1, "--checkpoint", "last",
        "--device", "cpu")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["sub-000.nii.gz", "sub-000_t2_std.nii.gz"]
    std = np.asarray(nib.load(str(out / "sub-000_t2_std.nii.gz")).dataobj)
    assert std.shape == nib.load(str(subject / "t1.nii.gz")).shape and float(std.max()) > 0
    cli("evaluate", out, tall_phantom, "-o", tmp_path / "eval")
    assert (tmp_path / "eval" / "per_subject.csv").read_text().count("sub-000") == 1
