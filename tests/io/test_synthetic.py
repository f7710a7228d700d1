"""Synthetic images are marked in every format and stay marked when read and saved again."""

from __future__ import annotations

import json

import pydicom
import pytest
import SimpleITK as sitk

from medtrans.io import SyntheticInfo, load, save

INFO = SyntheticInfo(model="pix2pix-unet-7f3e", source="sub-07/t1.nii.gz", method="pix2pix")


@pytest.mark.parametrize("name", ["sct.nii.gz", "sct.mha", "sct.nrrd", "sct.npy", "sct_dicom"])
def test_every_format_carries_the_mark_through_a_second_save(tmp_path, make_volume, name) -> None:
    path = save(make_volume(), tmp_path / name, synthetic=INFO)
    first = load(path)
    assert first.meta["synthetic"].startswith("SYNTHETIC") and INFO.model in first.meta["synthetic"]
    again = load(save(first, tmp_path / f"again_{name}"))
    assert again.meta["synthetic"] == first.meta["synthetic"]


def test_mha_mark_is_a_metadata_key_itk_tools_show(tmp_path, make_volume) -> None:
    save(make_volume(), tmp_path / "sct.mha", synthetic=INFO)
    img = sitk.ReadImage(str(tmp_path / "sct.mha"))
    assert img.GetMetaData("medtrans_synthetic") == INFO.description()


def test_npy_mark_is_in_the_sidecar(tmp_path, make_volume) -> None:
    save(make_volume(), tmp_path / "sct.npy", synthetic=INFO)
    assert json.loads((tmp_path / "sct.json").read_text())["synthetic"] == INFO.description()


def test_a_plain_string_mark_still_begins_synthetic_in_dicom(tmp_path, make_volume) -> None:
    out = save(make_volume(), tmp_path / "sct", synthetic="model cyclegan-1 from T1 series 5")
    ds = pydicom.dcmread(next(out.iterdir()))
    assert ds.SeriesDescription == "SYNTHETIC model cyclegan-1 from T1 series 5"
    assert ds.ImageComments.startswith("SYNTHETIC") and len(ds.SeriesDescription) <= 64


def test_a_prediction_named_after_its_subject_reads_back_as_its_target(tmp_path, make_volume) -> None:
    info = SyntheticInfo(model="run:best", source="sub-07/t1.nii.gz", method="regression", target="ct")
    back = load(save(make_volume(), tmp_path / "sub-07.nii.gz", synthetic=info))
    assert (back.modality, back.meta["units"]) == ("ct", "HU")
    assert back.meta["synthetic"].startswith("SYNTHETIC by medtrans target=ct model=run:best")
    assert load(tmp_path / "sub-07.nii.gz", modality="t2").modality == "t2"


def test_a_synthetic_dicom_series_reads_back_as_its_target_not_its_source(tmp_path, make_volume) -> None:
    source = save(make_volume(), tmp_path / "t1_series")
    reference = load(source, modality="t1")
    predicted = reference.with_array(reference.array * 2.0, modality="t2")
    info = SyntheticInfo(model="run:best", source=str(source), method="regression", target="t2")
    out = save(predicted, tmp_path / "sub-01", reference=reference, synthetic=info)
    ds = pydicom.dcmread(next(out.iterdir()))
    assert ds.SeriesDescription.startswith("SYNTHETIC t2 run:best from")
    assert ds.Modality == "MR"
    assert load(out).modality == "t2"
