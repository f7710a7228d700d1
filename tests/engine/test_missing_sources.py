"""Missing sources: dropout in training, availability channels, prediction from a subset of the sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medtrans.config import Config
from medtrans.data.missing import drop_sources, input_channels, with_availability
from medtrans.data.phantom import PhantomSpec, write_phantom
from medtrans.engine.predictor import Predictor
from medtrans.engine.trainer import train
from medtrans.errors import MedtransError
from medtrans.io import load
from medtrans.metrics import psnr


def test_drop_sources_zeroes_whole_sources_and_never_all() -> None:
    torch.manual_seed(0)
    stack = 3  # 2.5D: three slices per source
    source = torch.rand(4000, 2 * stack, 2, 2) + 1  # strictly positive: zeros mean dropped
    out = drop_sources(source, n_sources=2, dropout=0.5)
    assert out.shape == (4000, 4 * stack, 2, 2)
    images, available = out[:, : 2 * stack], out[:, 2 * stack:]
    flags = available[:, ::stack, 0, 0]  # one flag per source
    assert torch.equal(available, flags.repeat_interleave(stack, 1)[..., None, None].expand_as(available))
    assert torch.equal(images, source * available)  # a dropped source is zero in all its slices
    assert bool((flags.sum(1) >= 1).all())  # at least one source kept
    # each source is dropped with p = 0.5 unless it is the one forced to stay: P(absent) = 0.25
    assert abs(float((flags == 0).float().mean()) - 0.25) < 0.03
    assert input_channels(2, stack, 0.5) == 4 * stack and input_channels(2, stack, 0.0) == 2 * stack


def test_with_availability_matches_the_training_layout() -> None:
    array = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32) + 1
    out = with_availability(array, [True, False])
    np.testing.assert_array_equal(out[0], array[0])
    assert not out[1].any() and out[2].min() == 1 and not out[3].any()


@pytest.fixture(scope="module")
def flair_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flair")
    spec = PhantomSpec(anatomy="brain", size=(32, 32, 12), modalities=("t1", "t2", "flair"), seed=2)
    return write_phantom(root, spec, subjects=6)


def _config(make_config: Callable[..., Config], root: Path, dropout: float) -> Config:
    return make_config(root, **{
        "data.sources": ["t1", "t2"], "data.target": "flair", "data.source_dropout": dropout,
        "optim.steps": 150, "optim.lr": 3e-3, "optim.batch_size": 8, "validation.every": 150,
        "logging.tensorboard": False, "logging.every": 50, "checkpoint.every": 150,
        "backbone.args": {"depth": 2, "width": 8}})


def test_a_dropout_run_predicts_from_any_subset_and_both_beat_t1_alone(
        flair_data: Path, make_config: Callable[..., Config], tmp_path: Path) -> None:
    run = train(_config(make_config, flair_data, 0.5), run_dir=tmp_path / "dropout")
    predictor = Predictor.from_run(run, which="last", device="cpu")
    scores: dict[str, list[float]] = {"t1": [], "t2": [], "both": []}
    for sid in ("sub-004", "sub-005"):
        folder = flair_data / sid
        t1, t2 = load(folder / "t1.nii.gz", modality="t1"), load(folder / "t2.nii.gz", modality="t2")
        flair, mask = load(folder / "flair.nii.gz").array, load(folder / "mask.nii.gz").array > 0
        for name, volumes in (("t1", {"t1": t1}), ("t2", {"t2": t2}), ("both", {"t1": t1, "t2": t2})):
            pred = predictor.predict_subject(volumes)
            assert pred.shape == t1.shape and np.array_equal(pred.affine, t1.affine)
            scores[name].append(float(psnr(pred.array, flair, mask=mask)))
    # FLAIR needs T2's fluid contrast: T1 alone is far worse than both (T2 alone can come close after
    # a short training: the net has not yet learnt to use T1 beside it; see docs/BENCHMARKS.md)
    assert np.mean(scores["both"]) > np.mean(scores["t1"]) + 1.0, scores


def test_a_run_without_dropout_refuses_a_missing_source(flair_data: Path, make_config: Callable[..., Config],
                                                        tmp_path: Path) -> None:
    config = make_config(flair_data, **{"data.sources": ["t1", "t2"], "data.target": "flair",
                                        "optim.steps": 1, "logging.tensorboard": False})
    run = train(config, run_dir=tmp_path / "plain")
    predictor = Predictor.from_run(run, which="last", device="cpu")
    t1 = load(flair_data / "sub-004" / "t1.nii.gz", modality="t1")
    with pytest.raises(MedtransError, match="missing modality t2.*not trained with data.source_dropout"):
        predictor.predict_subject({"t1": t1})


def test_predict_cli_translates_a_subject_missing_a_source_and_says_so(
        flair_data: Path, make_config: Callable[..., Config], tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from medtrans.cli import _register, app

    _register()
    config = make_config(flair_data, **{"data.sources": ["t1", "t2"], "data.target": "flair",
                                        "data.source_dropout": 0.5, "optim.steps": 2,
                                        "logging.tensorboard": False})
    run = train(config, run_dir=tmp_path / "run")
    subject = tmp_path / "inputs" / "sub-004"
    subject.mkdir(parents=True)
    shutil.copy(flair_data / "sub-004" / "t1.nii.gz", subject / "t1.nii.gz")  # no t2
    result = CliRunner().invoke(app, ["predict", str(run), str(subject), "-o", str(tmp_path / "out"),
                                      "--checkpoint", "last", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "sub-004: translated without t2" in result.output
    written = load(tmp_path / "out" / "sub-004.nii.gz")
    assert "sources missing: t2" in written.meta["synthetic"]
    assert written.shape == load(subject / "t1.nii.gz").shape


def test_a_dropout_run_exports_to_onnx_and_the_export_predicts_from_a_subset(
        flair_data: Path, make_config: Callable[..., Config], tmp_path: Path) -> None:
    from medtrans.engine.export import export_run, onnx_predictor

    config = make_config(flair_data, **{"data.sources": ["t1", "t2"], "data.target": "flair",
                                        "data.source_dropout": 0.5, "optim.steps": 2,
                                        "validation.every": None, "logging.tensorboard": False})
    run = train(config, run_dir=tmp_path / "run")
    result = export_run(run, tmp_path / "model.onnx", which="last")
    # the example is a real slice with its two availability channels (it had the images' two only)
    assert result.real_input and result.input_shape == (1, 4, 32, 32)
    assert result.max_difference <= 1e-4
    t1 = load(flair_data / "sub-004" / "t1.nii.gz", modality="t1")
    onnx_out = onnx_predictor(result.path).predict_subject({"t1": t1}).array
    torch_out = Predictor.from_run(run, which="last", device="cpu").predict_subject({"t1": t1}).array
    assert np.abs(onnx_out - torch_out).max() <= 1e-4 * float(np.ptp(torch_out))
