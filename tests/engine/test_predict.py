"""Whole-volume prediction from a trained run: geometry kept, DICOM in → DICOM out, errors, the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml
from tests.engine.helpers import cli

from medtrans.cli import _register
from medtrans.config import Config
from medtrans.engine.inferers import Sampling
from medtrans.engine.predictor import Predictor
from medtrans.errors import MedtransError
from medtrans.io import Volume, load, save

_register()


def oblique_lps(volume: Volume) -> Volume:
    """The same voxels with an LPS, 20°-rotated, shifted affine: a geometry no plan shares."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag([7.5, 7.5, 9.0])
    affine[:3, 3] = [120.0, 90.0, -30.0]
    return Volume(volume.array.copy(), affine, {**volume.meta, "source": None})


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    return Predictor.from_run(tiny_run, device="cpu")


def test_prediction_is_on_the_source_grid_in_target_units(predictor: Predictor, phantom_root: Path,
                                                          tmp_path: Path) -> None:
    written = predictor.predict_paths([phantom_root / "sub-004"], tmp_path)
    assert written == [tmp_path / "sub-004.nii.gz"]
    source, out = nib.load(phantom_root / "sub-004" / "t1.nii.gz"), nib.load(written[0])
    assert out.shape == source.shape
    np.testing.assert_array_equal(out.affine, source.affine)
    data = np.asarray(out.dataobj)
    t2 = np.asarray(nib.load(phantom_root / "sub-004" / "t2.nii.gz").dataobj)
    assert np.isfinite(data).all() and data.max() > 0.05 * t2.max()  # T2 units, not model space [-1, 1]
    marking = load(written[0]).meta["synthetic"]
    assert marking.startswith("SYNTHETIC") and "model=tiny:best" in marking and "method=regression" in marking
    assert f"from={phantom_root / 'sub-004' / 't1.nii.gz'}" in marking


def test_oblique_lps_input_gives_the_same_affine_and_shape(predictor: Predictor, phantom_root: Path,
                                                         tmp_path: Path) -> None:
    tilted = oblique_lps(load(phantom_root / "sub-004" / "t1.nii.gz"))
    save(tilted, tmp_path / "tilted.nii.gz")
    source = load(tmp_path / "tilted.nii.gz")
    assert source.orientation != "RAS"
    for tta in (False, True):
        predictor.sampling = Sampling(tta=tta)
        out_dir = tmp_path / f"tta-{tta}"
        out = load(predictor.predict_paths([tmp_path / "tilted.nii.gz"], out_dir)[0])
        assert out.shape == source.shape
        np.testing.assert_array_equal(out.affine, source.affine)
    predictor.sampling = Sampling(tta=False)


def test_tta_on_a_volume_keeps_geometry_and_stays_close(predictor: Predictor, phantom_root: Path) -> None:
    t1 = load(phantom_root / "sub-005" / "t1.nii.gz")
    plain = predictor.predict_subject({"t1": t1})
    predictor.sampling = Sampling(tta=True)
    try:
        flipped = predictor.predict_subject({"t1": t1})
    finally:
        predictor.sampling = Sampling(tta=False)
    assert flipped.shape == t1.shape and np.array_equal(flipped.affine, t1.affine)
    assert not np.array_equal(flipped.array, plain.array)  # the flips do change a conv net's output
    scale = np.abs(plain.array).max()
    assert np.abs(flipped.array - plain.array).mean() < 0.1 * scale


def test_dicom_in_gives_a_derived_dicom_series_marked_synthetic(predictor: Predictor, phantom_root: Path,
                                                                tmp_path: Path) -> None:
    series = tmp_path / "patient" / "T1_series"
    save(oblique_lps(load(phantom_root / "sub-004" / "t1.nii.gz")), series)
    source = load(series)
    written = predictor.predict_paths([series], tmp_path / "out")
    assert written == [tmp_path / "out" / "T1_series"] and written[0].is_dir()
    out = load(written[0])
    assert out.shape == source.shape
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-4)
    src = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    files = sorted(written[0].iterdir())
    assert len(files) == source.shape[2]
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SeriesDescription.startswith("SYNTHETIC")
        assert ds.ImageComments.startswith("SYNTHETIC")
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert ds.SOPInstanceUID != src.SOPInstanceUID
        assert (ds.PatientID, ds.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID)
        assert "DERIVED" in ds.ImageType


def test_format_nii_from_dicom_and_dcm_from_nifti(predictor: Predictor, phantom_root: Path,
                                                  tmp_path: Path) -> None:
    series = tmp_path / "s1"
    save(load(phantom_root / "sub-005" / "t1.nii.gz"), series)
    assert predictor.predict_paths([series], tmp_path / "a", fmt="nii") == [tmp_path / "a" / "s1.nii.gz"]
    folder = predictor.predict_paths([phantom_root / "sub-005"], tmp_path / "b", fmt="dcm")[0]
    assert folder == tmp_path / "b" / "sub-005" and folder.is_dir()
    assert pydicom.dcmread(next(folder.iterdir())).SeriesDescription.startswith("SYNTHETIC")


def test_bad_inputs_are_named(predictor: Predictor, phantom_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "sub-x"
    empty.mkdir()
    (empty / "t2.nii.gz").write_bytes((phantom_root / "sub-004" / "t2.nii.gz").read_bytes())
    with pytest.raises(MedtransError, match="missing modality t1"):
        predictor.predict_paths([empty], tmp_path / "o")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(MedtransError, match="not an image file"):
        predictor.predict_paths([notes], tmp_path / "o")
    with pytest.raises(MedtransError, match="same output name"):
        predictor.predict_paths([phantom_root / "sub-004", phantom_root / "sub-004" / "t1.nii.gz",
                                 phantom_root / "sub-005" / "t1.nii.gz"], tmp_path / "o")
    with pytest.raises(MedtransError, match="missing modality t1"):
        predictor.predict_subject({"t2": load(phantom_root / "sub-004" / "t2.nii.gz")})
    assert not (tmp_path / "o").exists()


def test_real_cli_phantom_train_predict_evaluate_report(tmp_path: Path, make_config: Callable[..., Config]
                                                        ) -> None:
    data = tmp_path / "data"
    cli("phantom", data, "--subjects", 5, "--size", "32x32x12", "--modalities", "t1,t2", "--seed", 3,
        "--workers", 1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(make_config(data, **{"optim.steps": 2, "validation.every": 2,
                                                          "logging.tensorboard": False}).to_dict()))
    run = tmp_path / "run"
    cli("train", recipe, "--run-dir", run, "--set", "data.splits={train: 0.4, val: 0.2, test: 0.4}")
    test = json.loads((run / "splits.json").read_text())["test"]
    assert len(test) == 2
    output = cli("predict", run, *(data / s for s in test), "-o", tmp_path / "pred", "--tta",
                 "--batch-size", 3, "--checkpoint", "last", "--device", "cpu")
    for s in test:
        assert str(tmp_path / "pred" / f"{s}.nii.gz") in output
    cli("evaluate", tmp_path / "pred", data, "--ref-modality", "t2", "-o", run / "eval")
    cli("report", run, "-o", tmp_path / "report.html", "--max-slices", 4)  # finds run/eval
    html = (tmp_path / "report.html").read_text()
    for s in test:
        assert f"<h2>{s}</h2>" in html
    # source | synthetic | target | error | std (the TTA passes' spread, written beside the prediction)
    assert len(re.findall(r'<img id="img-0-\d+"', html)) == 5
    assert 'std · ' in html
    assert "<td>run</td>" in html  # the model is named after the run holding eval/


@pytest.mark.parametrize("dims, extra", [("2.5d", {"data.context": 1}),
                                         ("3d", {"data.patch_size": [16, 16, 8], "optim.batch_size": 2})])
def test_two_and_a_half_d_and_3d_runs_predict_on_the_source_grid(
        dims: str, extra: dict, phantom_root: Path, make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    from medtrans.engine.trainer import train

    config = make_config(phantom_root, **{"data.dims": dims, "optim.steps": 1, "validation.every": 1,
                                          "logging.tensorboard": False, **extra})
    run = train(config, run_dir=tmp_path / "run")
    predictor = Predictor.from_run(run, device="cpu", batch_size=3)
    source = oblique_lps(load(phantom_root / "sub-004" / "t1.nii.gz"))
    out = predictor.predict_subject({"t1": source})
    assert out.shape == source.shape and np.array_equal(out.affine, source.affine)
    assert np.isfinite(out.array).all() and out.meta["modality"] == "t2"


def test_cli_error_is_one_line_and_exit_code_2(tiny_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    done = subprocess.run([sys.executable, "-c", "from medtrans.cli import main; main()", "predict",
                           str(tiny_run), str(notes), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.txt" in lines[0] and "not an image file" in lines[0]
    assert not (tmp_path / "out").exists()


def test_inputs_named_like_users_name_them(predictor: Predictor, phantom_root: Path, tmp_path: Path) -> None:
    # <subject>/t1.nii.gz is named after the subject folder; a dataset root stands for its subjects
    written = predictor.predict_paths([phantom_root / "sub-004" / "t1.nii.gz"], tmp_path / "a")
    assert written == [tmp_path / "a" / "sub-004.nii.gz"]
    every = predictor.predict_paths([phantom_root], tmp_path / "b")
    assert [p.name for p in every] == [f"sub-00{i}.nii.gz" for i in range(6)]
    # other spellings of the modality in a subject folder (T1w as in BIDS)
    subject = tmp_path / "sub-bids"
    subject.mkdir()
    (subject / "T1w.nii.gz").write_bytes((phantom_root / "sub-004" / "t1.nii.gz").read_bytes())
    assert predictor.predict_paths([subject], tmp_path / "c") == [tmp_path / "c" / "sub-bids.nii.gz"]
    with pytest.raises(MedtransError, match="file name says t2 but the model translates t1"):
        predictor.predict_paths([phantom_root / "sub-004" / "t2.nii.gz"], tmp_path / "d")
