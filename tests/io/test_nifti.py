"""NIfTI round trips keep affine, values, dtype and the qform/sform codes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medtrans.io import SyntheticInfo, Volume, load, save

ORIENTATIONS = [("RAS", (0, 0, 0)), ("LPS", (0, 0, 0)), ("LAS", (0, 0, 0)), ("LPS", (14.0, -21.0, 37.0))]


@pytest.mark.parametrize(("codes", "oblique"), ORIENTATIONS)
def test_nifti_round_trip_keeps_affine_and_values(tmp_path, make_volume, codes, oblique) -> None:
    volume = make_volume(codes, oblique)
    path = save(volume, tmp_path / "ct.nii.gz")
    back = load(path)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.orientation == volume.orientation
    assert back.meta["modality"] == "ct" and back.meta["units"] == "HU" and back.meta["format"] == "nifti"
    # nibabel (the reference reader) sees the same geometry
    np.testing.assert_allclose(nib.load(str(path)).affine, volume.affine, atol=1e-4)


def test_nifti_keeps_qform_sform_codes_and_integer_dtype(tmp_path, affine_for) -> None:
    labels = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(labels, affine_for("LAS"))
    img.set_qform(affine_for("LAS"), code=2)
    img.set_sform(affine_for("LAS"), code=4)
    src = tmp_path / "seg.nii"
    nib.save(img, str(src))
    volume = load(src)
    assert volume.array.dtype == np.int16 and volume.meta["modality"] == "mask"
    out = load(save(volume, tmp_path / "copy.nii.gz"))
    header = nib.load(str(tmp_path / "copy.nii.gz")).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (2, 4)
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, labels)


def test_scaled_nifti_reads_as_float_with_scaling_applied(tmp_path) -> None:
    raw = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    volume = load(tmp_path / "ct.nii.gz")
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, raw * 2.0 - 1024.0)


def test_2d_nifti_gets_a_third_axis(tmp_path) -> None:
    nib.save(nib.Nifti1Image(np.ones((4, 5), np.float32), np.eye(4)), str(tmp_path / "t1.nii"))
    volume = load(tmp_path / "t1.nii")
    assert volume.shape == (4, 5, 1) and volume.modality == "t1"


def test_synthetic_nifti_is_marked_and_stays_marked(tmp_path, make_volume) -> None:
    info = SyntheticInfo(model="unet-l1-abc123", source="sub-01_T1w.nii.gz", method="regression")
    save(make_volume(), tmp_path / "sct.nii.gz", synthetic=info)
    header = nib.load(str(tmp_path / "sct.nii.gz")).header
    descrip = header["descrip"].item().decode()
    assert descrip.startswith("SYNTHETIC") and len(descrip) <= 80
    assert header["intent_name"].item().decode() == "SYNTHETIC"
    volume = load(tmp_path / "sct.nii.gz")
    assert volume.meta["synthetic"] == info.description()
    # saving the loaded synthetic volume again (no synthetic argument) keeps the mark
    save(volume, tmp_path / "again.nii")
    assert load(tmp_path / "again.nii").meta["synthetic"] == info.description()


def test_float64_is_stored_as_float32(tmp_path) -> None:
    array = np.linspace(-1, 1, 27).reshape(3, 3, 3)
    save(Volume(array, np.eye(4), {}), tmp_path / "x.nii.gz")
    assert nib.load(str(tmp_path / "x.nii.gz")).get_data_dtype() == np.float32


def test_nifti_without_any_transform_is_flagged(tmp_path) -> None:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "t1.nii"))
    assert load(tmp_path / "t1.nii").meta["geometry_assumed"] is True
    assert (
        "geometry_assumed"
        not in load(save(Volume(np.zeros((2, 2, 2)), np.eye(4), {}), tmp_path / "x.nii")).meta
    )
