"""Each layout read from a tiny dataset built here; detection, forcing, problems and bad folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medtrans.data.layouts import open_dataset
from medtrans.data.survey import dataset_report
from medtrans.errors import MedtransError
from medtrans.registry import LAYOUTS


def nifti(path: Path, shape=(4, 4, 3), spacing=1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.diag([spacing] * 3 + [1.0])), str(path))
    return path


def mha(path: Path, shape=(4, 4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape[::-1], np.float32)), str(path))
    return path


def test_generic_layout(tmp_path) -> None:
    for sid in ("s1", "s2"):
        for name in ("T1", "t2w", "mask", "labels"):
            nifti(tmp_path / sid / f"{name}.nii.gz")
    nifti(tmp_path / "s2" / "mystery.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.layout == "generic" and ds.ids == ["s1", "s2"] and ds.modalities == ["t1", "t2"]
    assert ds.subject("s1").mask.name == "mask.nii.gz" and ds.subject("s1").labels.name == "labels.nii.gz"
    assert any("mystery.nii.gz" in p for p in ds.problems)


def test_nnunet_layout_names_channels_from_dataset_json(tmp_path) -> None:
    (tmp_path / "imagesTr").mkdir()
    meta = {"channel_names": {"0": "T1", "1": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    for case in ("case_001", "case_002"):
        nifti(tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        nifti(tmp_path / "imagesTr" / f"{case}_0001.nii.gz")
    nifti(tmp_path / "labelsTr" / "case_001.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.layout == "nnunet" and ds.ids == ["case_001", "case_002"] and ds.modalities == ["ct", "t1"]
    assert ds.subject("case_001").labels is not None and ds.subject("case_002").labels is None
    assert ds.subject("case_002").images["ct"].name == "case_002_0001.nii.gz"


def test_brats_2021_and_2023_names(tmp_path) -> None:
    for mod in ("t1", "t1ce", "t2", "flair", "seg"):
        nifti(tmp_path / "BraTS2021_00000" / f"BraTS2021_00000_{mod}.nii.gz")
    for mod in ("t1n", "t1c", "t2w", "t2f", "seg"):
        nifti(tmp_path / "BraTS-GLI-00002-000" / f"BraTS-GLI-00002-000-{mod}.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.layout == "brats" and ds.ids == ["BraTS-GLI-00002-000", "BraTS2021_00000"]
    for s in ds.subjects:
        assert sorted(s.images) == ["flair", "t1", "t1ce", "t2"] and s.labels is not None
    assert ds.problems == []


def test_ixi_flat_and_in_modality_folders(tmp_path) -> None:
    nifti(tmp_path / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz")
    nifti(tmp_path / "IXI-T2" / "IXI002-Guys-0828-T2.nii.gz")
    nifti(tmp_path / "IXI012-HH-1211-T1.nii.gz")
    nifti(tmp_path / "IXI012-HH-1211-PD.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.layout == "ixi" and ds.ids == ["IXI002-Guys-0828", "IXI012-HH-1211"]
    assert sorted(ds.subject("IXI002-Guys-0828").images) == ["t1", "t2"]
    assert "IXI002-Guys-0828: missing pd" in ds.problems and "IXI012-HH-1211: missing t2" in ds.problems


def test_synthrad_2023_from_any_folder_level(tmp_path) -> None:
    for sid, mods in (("1BA001", ("mr", "ct", "mask")), ("1BC002", ("mr", "ct", "mask"))):
        for m in mods:
            nifti(tmp_path / "Task1" / "brain" / sid / f"{m}.nii.gz")
    for m in ("cbct", "ct", "mask"):
        nifti(tmp_path / "Task2" / "pelvis" / "2PA001" / f"{m}.nii.gz")
    top = open_dataset(tmp_path)
    assert top.layout == "synthrad" and top.ids == ["1BA001", "1BC002", "2PA001"]
    brain = open_dataset(tmp_path / "Task1" / "brain")
    assert brain.ids == ["1BA001", "1BC002"] and brain.modalities == ["ct", "mr"]
    assert brain.subject("1BA001").mask is not None


def test_synthrad_2025_mha(tmp_path) -> None:
    for sid in ("1HNA001", "1THB002", "1ABC003"):
        for m in ("mr", "ct", "mask"):
            mha(tmp_path / "Task1" / sid[1:3] / sid / f"{m}.mha")
    ds = open_dataset(tmp_path)
    assert ds.layout == "synthrad" and ds.ids == ["1ABC003", "1HNA001", "1THB002"]
    assert ds.subject("1HNA001").images["mr"].suffix == ".mha"
    report = dataset_report(tmp_path)
    assert "layout    synthrad" in report and "shape 4x4x3 (3)" in report


def test_forced_layout_and_unknown_layout_name(tmp_path) -> None:
    nifti(tmp_path / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz")
    with pytest.raises(MedtransError, match="no subjects found for layout ixi"):
        open_dataset(tmp_path, layout="ixi")
    with pytest.raises(MedtransError, match="unknown layout 'nifti'.*brats, generic, ixi, nnunet, synthrad"):
        open_dataset(tmp_path, layout="nifti")
    assert sorted(LAYOUTS.names()) == ["brats", "generic", "ixi", "nnunet", "synthrad"]


def test_forced_nnunet_without_channel_names_is_a_clear_error(tmp_path) -> None:
    nifti(tmp_path / "imagesTr" / "case_001_0000.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    with pytest.raises(MedtransError, match=r"dataset\.json: missing, unreadable, or without channel_names"):
        open_dataset(tmp_path, layout="nnunet")


def test_bad_folders_say_what_was_tried(tmp_path) -> None:
    with pytest.raises(MedtransError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(MedtransError, match="empty folder"):
        open_dataset(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(MedtransError) as err:
        open_dataset(tmp_path)
    message = str(err.value)
    assert "no known dataset layout" in message and "\n" not in message
    for name in ("nnunet", "brats", "synthrad", "ixi", "generic"):
        assert f"{name}: " in message


def test_missing_modality_is_a_problem_skip_warning_or_strict_error(tmp_path) -> None:
    for sid in ("a", "b", "c"):
        nifti(tmp_path / sid / "t1.nii.gz")
    nifti(tmp_path / "a" / "ct.nii.gz")
    nifti(tmp_path / "b" / "ct.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.problems == ["c: missing ct"]
    with pytest.warns(UserWarning, match=r"skipping 1 subject\(s\) missing a modality: c \(no ct\)"):
        kept = ds.require(["t1", "ct"])
    assert kept.ids == ["a", "b"]
    with pytest.raises(MedtransError, match=r"1 subject\(s\) miss a modality: c \(no ct\)"):
        ds.require(["t1", "ct"], strict=True)
    with pytest.raises(MedtransError, match="1 problem"):
        open_dataset(tmp_path, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.require(["t1"]).ids == ["a", "b", "c"]


def test_report_lists_grids_that_differ(tmp_path) -> None:
    nifti(tmp_path / "s1" / "t1.nii.gz", shape=(8, 8, 4), spacing=1.0)
    nifti(tmp_path / "s1" / "t2.nii.gz", shape=(4, 4, 2), spacing=2.0)
    nifti(tmp_path / "s2" / "t1.nii.gz", shape=(8, 8, 4))
    report = dataset_report(tmp_path)
    assert "subjects  2 (s1, s2)" in report
    assert "s1: modalities on different grids (t1 8x8x4, t2 4x4x2)" in report
    assert "s2: missing t2" in report and "problems  2" in report
    assert "t1        2 subjects   shape 8x8x4 (2)   spacing 1×1×1 mm" in report


def test_info_cli_on_a_dataset_folder(brain2d, run_cli) -> None:
    code, out, err = run_cli("info", brain2d)
    assert code == 0, err
    assert "layout    generic" in out and "subjects  4" in out and "problems  0" in out
    assert "ct        4 subjects   shape 128x128x1 (4)" in out
