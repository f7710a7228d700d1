"""DICOM reading against pydicom on real files, enhanced multi-frame order, and derived series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtrans.io import SyntheticInfo, Volume, load, save

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped inside the wheel


@pytest.mark.parametrize(
    ("name", "modality", "units"), [("CT_small.dcm", "ct", "HU"), ("MR_small.dcm", "mr", "a.u.")]
)
def test_values_equal_pydicom_modality_lut_on_real_files(name, modality, units) -> None:
    ds = pydicom.dcmread(TEST_FILES / name)
    volume = load(TEST_FILES / name)
    assert volume.shape == (int(ds.Columns), int(ds.Rows), 1)
    np.testing.assert_array_equal(volume.array[:, :, 0], apply_modality_lut(ds.pixel_array, ds).T)
    assert volume.meta["modality"] == modality and volume.meta["units"] == units
    # affine from ImageOrientationPatient / PixelSpacing / ImagePositionPatient, LPS -> RAS
    row, col = (
        np.array(ds.ImageOrientationPatient[:3], float),
        np.array(ds.ImageOrientationPatient[3:], float),
    )
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(volume.affine[:3, 0], lps @ row * float(ds.PixelSpacing[1]), atol=1e-9)
    np.testing.assert_allclose(volume.affine[:3, 1], lps @ col * float(ds.PixelSpacing[0]), atol=1e-9)
    np.testing.assert_allclose(
        volume.affine[:3, 3], lps @ np.array(ds.ImagePositionPatient, float), atol=1e-9
    )


def test_ct_small_keeps_hu_after_writing_a_derived_series(tmp_path) -> None:
    ct = load(TEST_FILES / "CT_small.dcm")
    back = load(save(ct, tmp_path / "copy", reference=ct))
    np.testing.assert_array_equal(back.array, ct.array)
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-6)


def _enhanced_mr(path: Path, frames: np.ndarray, order: list[int], affine_lps: np.ndarray) -> None:
    """An enhanced MR file whose frames are stored in ``order`` (not spatial order)."""
    rows, cols = frames.shape[1:]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = (
        ds.file_meta.MediaStorageSOPClassUID,
        ds.file_meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, len(order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    shared = Dataset()
    orientation, measures, rescale = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [
        *(affine_lps[:3, 0] / spacing[0]),
        *(affine_lps[:3, 1] / spacing[1]),
    ]
    measures.PixelSpacing = [spacing[1], spacing[0]]
    measures.SliceThickness = spacing[2]
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 0.5, 10.0, "US"
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [float(v) for v in affine_lps[:3, :3] @ [0, 0, k] + affine_lps[:3, 3]]
        item.PlanePositionSequence = [plane]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.ascontiguousarray(frames[order]).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_loads_in_spatial_order_with_its_affine(tmp_path, affine_for) -> None:
    affine = affine_for("LPS", spacing=(0.8, 0.9, 3.0), oblique=(0.0, 15.0, 10.0))
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    frames = np.stack([np.full((4, 5), 100 * (k + 1)) + np.arange(20).reshape(4, 5) for k in range(6)])
    order = [3, 0, 5, 1, 4, 2]
    _enhanced_mr(tmp_path / "enhanced.dcm", frames, order, affine_lps)
    volume = load(tmp_path / "enhanced.dcm")
    assert volume.shape == (5, 4, 6)
    for k in range(6):
        np.testing.assert_array_equal(volume.array[:, :, k], frames[k].T * 0.5 + 10.0)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    assert volume.meta["modality"] == "mr"


def test_derived_series_copies_patient_study_and_is_marked_synthetic(tmp_path, affine_for) -> None:
    source_dir = tmp_path / "mr_series"
    mr = Volume(
        np.random.default_rng(0).uniform(0, 900, (6, 5, 4)).astype(np.float32),
        affine_for("LPS", oblique=(5.0, 0.0, 0.0)),
        {"modality": "t1"},
    )
    save(mr, source_dir)
    # give the source series a patient and a description, as a scanner would
    for f in sorted(source_dir.iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.SeriesDescription = "Doe^Jane", "P042", "T1 MPRAGE"
        ds.save_as(f)
    mr_loaded = load(source_dir)
    synthetic_ct = mr_loaded.with_array(np.round(mr_loaded.array * 2 - 1024), modality="ct", units="HU")
    info = SyntheticInfo(model="unet-regression-1a2b", source="T1 MPRAGE", method="regression")
    out = save(synthetic_ct, tmp_path / "sct", reference=mr_loaded, synthetic=info)
    ref = pydicom.dcmread(sorted(source_dir.iterdir())[0])
    files = sorted(out.iterdir())
    assert len(files) == 4
    uids = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.PatientName == "Doe^Jane" and ds.PatientID == "P042"
        assert (
            ds.StudyInstanceUID == ref.StudyInstanceUID and ds.FrameOfReferenceUID == ref.FrameOfReferenceUID
        )
        assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.Modality == "CT" and ds.BitsAllocated == 16 and ds.PixelRepresentation == 1
        assert ds.pixel_array.dtype == np.int16
        assert ds.SeriesDescription.startswith("SYNTHETIC") and "unet-regression-1a2b" in ds.SeriesDescription
        assert "T1 MPRAGE" in ds.SeriesDescription
        assert ds.ImageComments.startswith("SYNTHETIC") and ref.SeriesInstanceUID in ds.ImageComments
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 4 and not uids & {pydicom.dcmread(f).SOPInstanceUID for f in source_dir.iterdir()}
    assert mr_loaded.modality == "t1"  # MR contrast from the SeriesDescription "T1 MPRAGE"
    back = load(out)
    assert back.meta["synthetic"].startswith("SYNTHETIC") and back.meta["units"] == "HU"
    np.testing.assert_allclose(back.affine, mr.affine, atol=1e-4)
    assert np.max(np.abs(back.array - synthetic_ct.array)) <= 0.5


def test_reference_given_as_a_folder_path(tmp_path, make_volume) -> None:
    save(make_volume("LPS"), tmp_path / "ref")
    out = save(make_volume("LPS", seed=1), tmp_path / "derived", reference=tmp_path / "ref")
    ref_study = pydicom.dcmread(next((tmp_path / "ref").iterdir())).StudyInstanceUID
    assert pydicom.dcmread(next(out.iterdir())).StudyInstanceUID == ref_study


def test_standalone_series_is_a_new_study_readable_by_pydicom_validation(tmp_path, make_volume) -> None:
    out = save(make_volume("RAS"), tmp_path / "alone")
    first = [pydicom.dcmread(f) for f in sorted(out.iterdir())]
    assert (
        len({ds.StudyInstanceUID for ds in first}) == 1 and len({ds.SeriesInstanceUID for ds in first}) == 1
    )
    for ds in first:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        assert "PatientName" in ds and "StudyDate" in ds and ds.RescaleType == "HU"


def test_series_in_nested_folders_and_extensionless_files(tmp_path, make_volume) -> None:
    save(make_volume("LPS"), tmp_path / "flat")
    nested = tmp_path / "export" / "DICOM" / "0001"
    nested.mkdir(parents=True)
    for f in (tmp_path / "flat").iterdir():
        shutil.copy(f, nested / f.stem)  # PACS exports often have no extension
    volume = load(tmp_path / "export")
    np.testing.assert_allclose(volume.affine, make_volume("LPS").affine, atol=1e-4)


def test_series_written_earlier_by_medtrans_is_replaced_and_an_empty_folder_used(
    tmp_path, make_volume
) -> None:
    (tmp_path / "out").mkdir()
    save(make_volume(seed=1), tmp_path / "out")  # existing empty folder
    first_uid = pydicom.dcmread(tmp_path / "out" / "IM00001.dcm").SeriesInstanceUID
    volume = make_volume(seed=2, shape=(9, 8, 4))
    save(volume, tmp_path / "out")  # a rerun replaces the earlier medtrans output
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == 4 and pydicom.dcmread(files[0]).SeriesInstanceUID != first_uid
    np.testing.assert_array_equal(load(tmp_path / "out").array, volume.array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_dicom_reference_volume_gives_a_standalone_series(tmp_path, make_volume) -> None:
    nifti = load(save(make_volume("LAS"), tmp_path / "mr.nii.gz"))
    out = save(nifti.with_array(nifti.array), tmp_path / "sct", reference=nifti)
    ds = pydicom.dcmread(next(out.iterdir()))
    assert ds.StudyInstanceUID and "ReferencedSeriesSequence" not in ds
    np.testing.assert_allclose(load(out).affine, nifti.affine, atol=1e-4)


def test_legacy_multiframe_is_stacked_by_spacing_between_slices(tmp_path) -> None:
    """Multi-frame without functional groups (e.g. NM/old MR): one position, frames along the normal."""
    frames = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "CT", generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 5, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [10, 20, 30], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SpacingBetweenSlices = [0.5, 0.25], 4.0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "legacy.dcm", enforce_file_format=True)
    volume = load(tmp_path / "legacy.dcm")
    expected = np.array([[-0.25, 0, 0, -10], [0, -0.5, 0, -20], [0, 0, 4, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(volume.affine, expected)
    np.testing.assert_array_equal(volume.array, frames.transpose(2, 1, 0) - 1024.0)
    assert volume.meta["units"] == "HU"


def test_rt_dose_multiframe_grid_is_read_by_its_frame_offsets(tmp_path):
    """pydicom's rtdose.dcm: one multi-frame 3D dose grid placed by GridFrameOffsetVector (not 4D)."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("rtdose.dcm"))
    ds = pydicom.dcmread(path)
    volume = load(path)
    pixels = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)  # (frames, rows, cols)
    assert volume.array.shape == (ds.Columns, ds.Rows, int(ds.NumberOfFrames))
    np.testing.assert_allclose(volume.array, pixels.transpose(2, 1, 0), rtol=1e-6)
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    offsets = np.array(ds.GridFrameOffsetVector, float)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    for i, j, k in [(0, 0, 0), (9, 0, 3), (2, 7, 14)]:
        lps = ipp + i * float(ds.PixelSpacing[1]) * row_dir + j * float(ds.PixelSpacing[0]) * col_dir
        lps = lps + offsets[k] * normal
        np.testing.assert_allclose((volume.affine @ [i, j, k, 1])[:3], lps * lps_to_ras, atol=1e-6)
    # the older absolute form (first entry = the first frame's position along the normal) is the same grid
    ds.GridFrameOffsetVector = [float(o + ipp[2]) for o in offsets]
    absolute = tmp_path / "dose_absolute.dcm"
    ds.save_as(absolute)
    np.testing.assert_allclose(load(absolute).affine, volume.affine, atol=1e-6)
    assert volume.meta["units"] == "a.u."  # DoseUnits RELATIVE
    ds.DoseUnits = "GY"
    ds.save_as(absolute)
    assert load(absolute).meta["units"] == "Gy"
