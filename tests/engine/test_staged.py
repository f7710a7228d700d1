"""Staged training (``init_from``) and the two-stage VQ family end to end: vqvae → vqar."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.engine.helpers import cli

from medtrans.cli import _register
from medtrans.config import Config
from medtrans.engine.predictor import Predictor
from medtrans.engine.run import load_trained
from medtrans.engine.trainer import train
from medtrans.errors import MedtransError

_register()

AUTOENCODER = {"widths": [8], "downsample": 4, "num_embeddings": 8, "embedding_dim": 4, "residual_blocks": 0}
STAGE1 = {"backbone": None, "method": {"name": "vqvae", "args": {"autoencoder": AUTOENCODER}},
          "optim.steps": 3, "validation.every": 3}


def stage2(stage1: Path, **init: Any) -> dict[str, Any]:
    return {"backbone": None, "validation.every": 2, "optim.steps": 4, "optim.ema": 0.9,
            "method": {"name": "vqar", "args": {"autoencoder": AUTOENCODER, "dim": 16, "depth": 1, "heads": 2,
                                                "source_width": 8}},
            "init_from": [{"network": "vqvae", "run": str(stage1), "freeze": True, **init}]}


@pytest.fixture(scope="module")
def stage1_run(phantom_root: Path, make_config: Callable[..., Config],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(make_config(phantom_root, **STAGE1), run_dir=tmp_path_factory.mktemp("vq") / "stage1")


def test_stage1_validates_on_reconstruction_and_logs_codebook_statistics(stage1_run: Path) -> None:
    state = json.loads((stage1_run / "checkpoints" / "last" / "state.json").read_text())
    assert state["history"][-1]["psnr"] > 0  # the reconstruction PSNR of the validation targets
    names = (stage1_run / "logs" / "metrics.csv").read_text()
    for name in ("g/l1", "g/commitment", "g/usage", "g/perplexity", "g/psnr"):
        assert name in names


@pytest.mark.parametrize("init, problem", [
    ({"run": "NOT_A_RUN"}, "is not a medtrans run"),
    ({"network": "decoder"}, "has no network 'decoder'"),
    ({"source": "prior"}, "the run has no network 'prior'"),
])
def test_init_from_errors_name_the_problem(init: dict[str, Any], problem: str, stage1_run: Path,
                                           phantom_root: Path, make_config: Callable[..., Config],
                                           tmp_path: Path) -> None:
    if init.get("run") == "NOT_A_RUN":
        init = {"run": str(tmp_path)}
    raw = stage2(stage1_run, **init)
    if "network" in init:  # vqar still needs its vqvae entry: the unknown network is a second one
        raw["init_from"].insert(0, stage2(stage1_run)["init_from"][0])
    config = make_config(phantom_root, **raw)
    with pytest.raises(MedtransError, match=problem):
        train(config, run_dir=tmp_path / "run")


def test_init_from_shape_mismatch_names_the_first_tensor(stage1_run: Path, phantom_root: Path,
                                                         make_config: Callable[..., Config],
                                                         tmp_path: Path) -> None:
    raw = stage2(stage1_run)
    raw["method"]["args"]["autoencoder"] = {**AUTOENCODER, "num_embeddings": 16}
    with pytest.raises(MedtransError, match=r"tensor vqvae\.quantizer\.cluster_size has shape \(8,\) there, "
                       r"\(16,\) here"):
        train(make_config(phantom_root, **raw), run_dir=tmp_path / "run")


def test_vqar_without_init_from_and_vqvae_with_a_backbone_are_refused(phantom_root: Path,
                                                                     make_config: Callable[..., Config],
                                                                     stage1_run: Path) -> None:
    with pytest.raises(MedtransError, match="init_from has no vqvae"):
        make_config(phantom_root, **{**stage2(stage1_run), "init_from": []})
    with pytest.raises(MedtransError, match="builds its own networks"):
        make_config(phantom_root, **{**STAGE1, "backbone": {"name": "unet"}})


def test_frozen_stage1_is_bit_identical_after_stage2(stage1_run: Path, phantom_root: Path,
                                                     make_config: Callable[..., Config],
                                                     tmp_path: Path) -> None:
    run = train(make_config(phantom_root, **stage2(stage1_run)), run_dir=tmp_path / "stage2")
    before = load_file(stage1_run / "checkpoints" / "best" / "model.safetensors")
    after = load_file(run / "checkpoints" / "last" / "model.safetensors")  # the EMA weights
    state = load_file(run / "checkpoints" / "last" / "state.safetensors")  # the live weights
    stage1_keys = [k for k in before if k.startswith("vqvae.")]
    assert len(stage1_keys) > 5
    for key in stage1_keys:
        assert torch.equal(before[key], after[key]) and torch.equal(before[key], state[f"method.{key}"]), key
    assert any(not torch.equal(state[f"method.{k}"], after[k]) for k in after if k.startswith("prior."))
    assert not any(k.startswith("optim.g") and "vqvae" in k for k in state)  # not in the optimiser
    method, _, _ = load_trained(run)  # reading the run back does not need stage 1 any more
    assert torch.equal(method.state_dict()["vqvae.quantizer.codebook"], before["vqvae.quantizer.codebook"])


def test_two_stage_resume_is_exact_and_init_from_is_part_of_the_training_config(
        stage1_run: Path, phantom_root: Path, make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config(phantom_root, **{**stage2(stage1_run), "deterministic": True})
    whole = train(config, run_dir=tmp_path / "whole")
    parted = train(config, run_dir=tmp_path / "parted", stop_after=2)
    train(config, resume=parted)
    for name in ("model.safetensors", "state.safetensors"):
        a, b = (load_file(r / "checkpoints" / "last" / name) for r in (whole, parted))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    unfrozen = make_config(phantom_root, **{**stage2(stage1_run, freeze=False), "deterministic": True})
    with pytest.raises(MedtransError, match=r"differs from the run.s in init_from \("):
        train(unfrozen, resume=parted)


def test_real_cli_two_stages_train_predict_samples_evaluate(tmp_path: Path,
                                                            make_config: Callable[..., Config]) -> None:
    data = tmp_path / "data"  # 12 slices: evaluate's 3D SSIM window needs 11
    cli("phantom", data, "--subjects", 5, "--size", "32x32x12", "--modalities", "t1,t2", "--seed", 3,
        "--workers", 1)
    splits = {"data.splits": {"train": 0.4, "val": 0.2, "test": 0.4}}
    first = tmp_path / "stage1.yaml"
    first.write_text(yaml.safe_dump(make_config(data, **STAGE1, **splits).to_dict()))
    cli("train", first, "--run-dir", tmp_path / "s1")
    with pytest.raises(MedtransError, match="cannot translate a source.*vqar"):
        Predictor.from_run(tmp_path / "s1", device="cpu")
    second = tmp_path / "stage2.yaml"
    second.write_text(yaml.safe_dump(make_config(data, **stage2(tmp_path / "s1"), **splits).to_dict()))
    cli("train", second, "--run-dir", tmp_path / "s2")
    test = json.loads((tmp_path / "s2" / "splits.json").read_text())["test"]
    assert len(test) == 2
    cli("predict", tmp_path / "s2", *(data / s for s in test), "-o", tmp_path / "pred", "--samples", 3,
        "--device", "cpu")
    for s in test:
        assert (tmp_path / "pred" / f"{s}.nii.gz").is_file()
        assert (tmp_path / "pred" / f"{s}_t2_std.nii.gz").is_file()
    cli("evaluate", tmp_path / "pred", data, "--ref-modality", "t2", "-o", tmp_path / "eval")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["counts"]["predictions"] == 2 and summary["counts"]["uncertainty_maps"] == 2
    assert summary["metrics"]["psnr"]["n"] == 2 and summary["metrics"]["psnr"]["mean"] > 0
