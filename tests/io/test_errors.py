"""Each bad input raises its own MedtransError naming file, problem and fix; nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medtrans.errors import MedtransError
from medtrans.io import Volume, load, save

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder`` (hidden ones too) with its bytes and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _fails(match: str, call, *args, **kwargs) -> MedtransError:
    """The call raises a MedtransError whose one-line text matches, names a path and gives a fix."""
    with pytest.raises(MedtransError, match=match) as info:
        call(*args, **kwargs)
    err = info.value
    assert err.path and err.fix and "\n" not in str(err)
    return err


@pytest.fixture
def series(tmp_path, make_volume) -> Path:
    """A 6-slice CT series, one file per slice."""
    return save(make_volume("LPS", shape=(6, 5, 6)), tmp_path / "series")


def test_truncated_nifti_gz_and_nii(tmp_path, make_volume) -> None:
    for name in ("ct.nii.gz", "ct.nii"):
        path = save(make_volume(shape=(20, 20, 20)), tmp_path / name)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        before = _snapshot(tmp_path)
        _fails("truncated or corrupt", load, path)
        assert _snapshot(tmp_path) == before


def test_corrupt_and_truncated_dicom(tmp_path) -> None:
    shutil.copy(TEST_FILES / "MR_truncated.dcm", tmp_path / "mr.dcm")
    _fails("DICOM file is truncated or corrupt", load, tmp_path / "mr.dcm")
    (tmp_path / "notes.dcm").write_text("not a dicom file")
    _fails("DICOM file is truncated or corrupt", load, tmp_path / "notes.dcm")


def test_corrupt_mha(tmp_path, make_volume) -> None:
    path = save(make_volume(shape=(20, 20, 20)), tmp_path / "ct.mha")
    path.write_bytes(path.read_bytes()[:300])
    _fails("not a readable image, truncated or corrupt", load, path)


def test_unknown_extension_on_read_and_write(tmp_path, make_volume) -> None:
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8\xff")
    err = _fails("cannot read this file type", load, tmp_path / "scan.jpg")
    assert ".nii.gz" in err.fix
    _fails("cannot write this file type", save, make_volume(), tmp_path / "out.jpg")
    assert not (tmp_path / "out.jpg").exists()


def test_missing_path(tmp_path) -> None:
    _fails("does not exist", load, tmp_path / "nothere.nii.gz")


def test_4d_image_says_how_to_pick_a_volume(tmp_path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "bold.nii.gz"))
    err = _fails("4 dimensions", load, tmp_path / "bold.nii.gz")
    assert "split" in err.fix and "[..., 0]" in err.fix


def test_nan_and_inf_voxels_refused_on_read_and_write(tmp_path) -> None:
    array = np.zeros((3, 3, 3), np.float32)
    array[1, 2, 0] = np.nan
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / "t1.nii.gz"))
    err = _fails("NaN or Inf", load, tmp_path / "t1.nii.gz")
    assert "(1, 2, 0)" in err.problem
    array[1, 2, 0] = np.inf
    before = _snapshot(tmp_path)
    _fails("NaN or Inf", save, Volume(array, np.eye(4), {}), tmp_path / "out.nii.gz")
    assert _snapshot(tmp_path) == before


def test_folder_with_several_series_lists_them_and_series_uid_picks_one(tmp_path, make_volume) -> None:
    mixed = tmp_path / "mixed"
    for name, shape, description in (("a", (5, 4, 3), "AX T1"), ("b", (5, 4, 4), "COR T2")):
        out = save(make_volume(shape=shape), tmp_path / name)
        for f in out.iterdir():
            ds = pydicom.dcmread(f)
            ds.SeriesDescription = description
            mixed.mkdir(exist_ok=True)
            ds.save_as(mixed / f"{name}_{f.name}")
    uids = {pydicom.dcmread(next((mixed).glob(f"{n}_*"))).SeriesInstanceUID for n in "ab"}
    err = _fails("holds 2 DICOM series", load, mixed)
    for uid in uids:
        assert uid in err.problem
    assert "'AX T1'" in err.problem and "3 files" in err.problem and "4 files" in err.problem
    assert "series_uid" in err.fix and "--series" in err.fix
    uid_b = pydicom.dcmread(next(mixed.glob("b_*"))).SeriesInstanceUID
    assert load(mixed, series_uid=uid_b).shape == (5, 4, 4)
    _fails("no series with UID 1.2.3", load, mixed, series_uid="1.2.3")


def test_missing_slice_names_the_gap(series) -> None:
    (series / "IM00003.dcm").unlink()
    err = _fails("slice gap", load, series)
    assert "IM00002.dcm" in err.problem and "IM00004.dcm" in err.problem
    assert "about 1 slice(s) missing" in err.problem


def test_unevenly_spaced_slices_named(series) -> None:
    ds = pydicom.dcmread(series / "IM00004.dcm")
    ds.ImagePositionPatient = [
        ds.ImagePositionPatient[0],
        ds.ImagePositionPatient[1],
        float(ds.ImagePositionPatient[2]) + 0.7,
    ]
    ds.save_as(series / "IM00004.dcm")
    err = _fails("slice gap", load, series)
    assert "uneven slice spacing" in err.problem and "IM00004.dcm" in err.problem


def test_duplicate_positions_reported_as_4d_series(series) -> None:
    ds = pydicom.dcmread(series / "IM00002.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(series / "IM00002_echo2.dcm")
    _fails("share the slice position", load, series)


def test_empty_folder_and_folder_without_dicom(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    _fails("folder is empty", load, tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    _fails("no DICOM images among its 1 file", load, tmp_path / "docs")


def test_never_writes_over_an_input(tmp_path, make_volume, series) -> None:
    path = save(make_volume(), tmp_path / "ct.nii.gz")
    volume = load(path)
    before = _snapshot(tmp_path)
    _fails("is an input", save, volume, path)
    _fails("is an input", save, volume, series, reference=load(series))
    _fails("is an input", save, volume, series / "IM00001.dcm", reference=series)
    assert _snapshot(tmp_path) == before


def test_non_empty_output_folder_is_refused(tmp_path, make_volume, series) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    _fails("not empty", save, make_volume(), tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    # a folder of acquired (not medtrans-derived) DICOM files is never replaced
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.Manufacturer, ds.ImageType = "SIEMENS", ["ORIGINAL", "PRIMARY"]
        ds.save_as(f)
    before = _snapshot(series)
    _fails("not empty", save, make_volume(), series)
    assert _snapshot(series) == before


def test_a_failed_write_leaves_nothing_behind(tmp_path, make_volume) -> None:
    """The PNG writer refuses a multi-slice volume inside the staging step: no file, no temp folder."""
    _fails("hold one 2D slice", save, make_volume(), tmp_path / "slice.png")
    _fails("holds one slice", save, make_volume(), tmp_path / "slice.dcm")
    assert list(tmp_path.iterdir()) == []


def test_successful_load_and_save_leave_inputs_untouched(tmp_path, series) -> None:
    before = _snapshot(series)
    volume = load(series)
    save(volume, tmp_path / "derived", reference=volume)
    save(volume, tmp_path / "ct.nii.gz")
    assert _snapshot(series) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "derived", "series"]


def test_unreadable_file_is_a_permission_error_not_corrupt(series) -> None:
    """Through the real CLI, on a DICOM series with one file its user may not read (root reads
    everything, so as root the command runs without the capabilities that bypass file permissions)."""
    import os
    import subprocess
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    image = sorted(series.iterdir())[2]
    image.chmod(0o000)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", "from medtrans.cli import main; main()", "info",
                               str(series)], capture_output=True, text=True, timeout=120)
    finally:
        image.chmod(0o644)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"{image}: permission denied" in line and "read access" in line
    assert "corrupt" not in line and "re-export" not in line
