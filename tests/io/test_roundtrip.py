"""Round trips through every writable format keep the affine (1e-4 mm) and the values."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medtrans.errors import MedtransError
from medtrans.io import Volume, load, save

CASES = [
    ("RAS", (0, 0, 0)),
    ("LPS", (0, 0, 0)),
    ("LAS", (0, 0, 0)),
    ("RAS", (14.0, -21.0, 37.0)),
    ("LAS", (-8.0, 30.0, 5.0)),
]


@pytest.mark.parametrize("middle", ["dicom", "series.mha", "series.nrrd", "series.mhd", "series.npy"])
@pytest.mark.parametrize(("codes", "oblique"), CASES)
def test_nifti_to_format_to_nifti_keeps_ct_geometry_and_hu(tmp_path, make_volume, middle, codes, oblique):
    """CT in HU: NIfTI -> middle format -> NIfTI, affine to 1e-4 mm and every voxel to 1 HU."""
    volume = make_volume(codes, oblique, modality="ct")
    first = load(save(volume, tmp_path / "ct.nii.gz"))
    middle_volume = load(save(first, tmp_path / middle))
    last = load(save(middle_volume, tmp_path / "ct_back.nii.gz"))
    np.testing.assert_allclose(last.affine, volume.affine, atol=1e-4)
    assert last.orientation == codes
    assert np.max(np.abs(last.array - volume.array)) <= 1.0
    assert last.meta["modality"] == "ct" and last.meta["units"] == "HU"


@pytest.mark.parametrize(("codes", "oblique"), CASES[:3] + CASES[4:])
def test_mr_float_values_survive_dicom_int16_to_its_quantisation_step(tmp_path, make_volume, codes, oblique):
    volume = make_volume(codes, oblique, modality="t2")
    volume.array = (volume.array / 7.3).astype(np.float32)  # non-integer a.u.
    back = load(save(load(save(volume, tmp_path / "t2.nii.gz")), tmp_path / "dicom"))
    step = (volume.array.max() - volume.array.min()) / 65534
    assert np.max(np.abs(back.array - volume.array)) <= step
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    assert back.meta["modality"] == "t2"  # SeriesDescription "medtrans derived t2" names the contrast


def test_mha_matches_simpleitk_geometry(tmp_path, make_volume) -> None:
    """SimpleITK (the reference reader) sees our RAS affine as LPS origin/direction/spacing."""
    volume = make_volume("LAS", (10.0, 0.0, -25.0))
    save(volume, tmp_path / "ct.mha")
    img = sitk.ReadImage(str(tmp_path / "ct.mha"))
    lps = np.diag([-1, -1, 1, 1]) @ volume.affine
    np.testing.assert_allclose(img.GetOrigin(), lps[:3, 3], atol=1e-6)
    np.testing.assert_allclose(img.GetSpacing(), volume.spacing, atol=1e-6)
    np.testing.assert_allclose(
        np.reshape(img.GetDirection(), (3, 3)), lps[:3, :3] / volume.spacing, atol=1e-6
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), volume.array.transpose(2, 1, 0))


def test_dicom_series_matches_simpleitk_and_nibabel(tmp_path, make_volume) -> None:
    """ITK's GDCM series reader and our reader agree on the series we write."""
    volume = make_volume("LPS", (12.0, -7.0, 20.0))
    save(volume, tmp_path / "series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    img = reader.Execute()
    lps = np.diag([-1, -1, 1, 1]) @ volume.affine
    np.testing.assert_allclose(img.GetOrigin(), lps[:3, 3], atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), volume.spacing, atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(img).transpose(2, 1, 0), volume.array, atol=0.5)
    save(load(tmp_path / "series"), tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(nib.load(str(tmp_path / "ct.nii.gz")).affine, volume.affine, atol=1e-4)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_slice_formats_round_trip_ct_through_uint16_and_keep_geometry(tmp_path, make_volume, ext) -> None:
    volume = make_volume("LPS", shape=(7, 5, 1))
    back = load(save(volume, tmp_path / f"ct{ext}"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-12)
    assert np.asarray(Image.open(tmp_path / f"ct{ext}")).shape == (5, 7)  # rows = j, columns = i


@pytest.mark.parametrize(
    ("dtype", "ext"), [(np.uint8, ".png"), (np.uint16, ".png"), (np.uint8, ".tiff"), (np.uint16, ".tif")]
)
def test_plain_8_and_16_bit_pictures_read_with_their_values(tmp_path, dtype, ext) -> None:
    pixels = (np.arange(6 * 4).reshape(6, 4) * (np.iinfo(dtype).max // 23)).astype(dtype)
    Image.fromarray(pixels).save(tmp_path / f"t1{ext}")
    volume = load(tmp_path / f"t1{ext}")
    assert volume.shape == (4, 6, 1) and volume.array.dtype == dtype
    np.testing.assert_array_equal(volume.array[:, :, 0], pixels.T)
    assert volume.meta["geometry_assumed"] and volume.modality == "t1"


def test_npy_with_hand_written_spacing_sidecar(tmp_path) -> None:
    np.save(tmp_path / "sub-01_T2w.npy", np.ones((3, 4, 5), np.float32))
    (tmp_path / "sub-01_T2w.json").write_text('{"spacing": [0.5, 0.6, 2.0], "origin": [1, 2, 3]}')
    volume = load(tmp_path / "sub-01_T2w.npy")
    np.testing.assert_allclose(volume.affine, [[0.5, 0, 0, 1], [0, 0.6, 0, 2], [0, 0, 2, 3], [0, 0, 0, 1]])
    assert volume.modality == "t2" and "geometry_assumed" not in volume.meta


def test_integer_masks_stay_exact_through_dicom(tmp_path, affine_for) -> None:
    labels = np.random.default_rng(3).integers(0, 3, size=(6, 5, 4)).astype(np.uint8)
    back = load(save(Volume(labels, affine_for("LAS"), {"modality": "mask"}), tmp_path / "seg"))
    np.testing.assert_array_equal(back.array, labels)


def test_grey_rgb_and_grey_alpha_pictures_read_as_grey_and_colour_is_refused(tmp_path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    for name in ("rgb.png", "la.png"):
        np.testing.assert_array_equal(load(tmp_path / name).array[:, :, 0], grey.T)
    colour = np.stack([grey, grey[::-1], grey], axis=-1)
    Image.fromarray(colour).save(tmp_path / "photo.png")
    with pytest.raises(MedtransError, match="not a greyscale scan"):
        load(tmp_path / "photo.png")


def test_saved_files_and_series_follow_the_umask_not_staging_privacy(tmp_path, make_volume) -> None:
    """Staging folders are private (0700); what lands at the destination is readable like any file."""
    volume = make_volume()
    old = os.umask(0o022)
    try:
        save(volume, tmp_path / "ct.nii.gz")
        save(volume, tmp_path / "ct.npy")
        save(volume, tmp_path / "series")
    finally:
        os.umask(old)
    for path in (tmp_path / "ct.nii.gz", tmp_path / "ct.npy", tmp_path / "ct.json",
                 *(tmp_path / "series").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "series").stat().st_mode) == 0o755
