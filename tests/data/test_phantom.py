"""The phantom's physics, checked on the written files with the tissue labels as ground truth."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medtrans.data.phantom import LABELS, PhantomSpec, simulate, write_phantom

L = {name: i for i, name in enumerate(LABELS)}


def _read(path):
    return np.asarray(nib.load(str(path)).dataobj)


def _subject(root, sid="sub-000"):
    folder = root / sid
    labels = _read(folder / "labels.nii.gz")
    images = {p.name.split(".")[0]: _read(p).astype(np.float64) for p in folder.glob("*.nii.gz")}
    return labels, images


def _median(image, labels, *names):
    return float(np.median(image[np.isin(labels, [L[n] for n in names])]))


@pytest.mark.parametrize("sid", ["sub-000", "sub-001", "sub-002", "sub-003"])
def test_brain_mr_contrasts_follow_the_signal_equations(brain2d, sid) -> None:
    labels, im = _subject(brain2d, sid)
    csf, wm, gm = (_median(im["t2"], labels, n) for n in ("csf", "wm", "gm"))
    assert csf > 1.5 * wm and csf > gm  # T2: CSF brightest
    assert _median(im["t1"], labels, "csf") < 0.7 * _median(im["t1"], labels, "wm")  # T1: CSF dark
    assert _median(im["t1"], labels, "wm") > _median(im["t1"], labels, "gm")  # T1: WM above GM
    # FLAIR: CSF suppressed below white matter, although CSF is the brightest tissue on T2
    assert _median(im["flair"], labels, "csf") < 0.7 * _median(im["flair"], labels, "wm")
    # bone and air dark on T1
    t1_wm = _median(im["t1"], labels, "wm")
    assert _median(im["t1"], labels, "bone") < 0.5 * t1_wm
    assert _median(im["t1"], labels, "background", "air") < 0.15 * t1_wm
    # lesions bright on T2 and enhancing after contrast
    if (labels == L["lesion"]).sum() >= 3:
        assert _median(im["t2"], labels, "lesion") > max(1.3 * wm, gm)  # bright in the white matter
        ratio_ce = _median(im["t1ce"], labels, "lesion") / _median(im["t1ce"], labels, "wm")
        ratio_pre = _median(im["t1"], labels, "lesion") / _median(im["t1"], labels, "wm")
        assert ratio_ce > 1.3 * ratio_pre


def test_every_brain_subject_has_a_lesion(brain2d) -> None:
    for sid in ("sub-000", "sub-001", "sub-002", "sub-003"):
        labels, _ = _subject(brain2d, sid)
        assert (labels == L["lesion"]).sum() > 0


@pytest.mark.parametrize("sid", ["sub-000", "sub-001"])
def test_brain_ct_pet_cbct_units_and_noise(brain2d, sid) -> None:
    labels, im = _subject(brain2d, sid)
    assert _median(im["ct"], labels, "bone") >= 700
    assert _median(im["ct"], labels, "background", "air") <= -900
    assert im["ct"].min() >= -1024 and im["ct"].max() <= 3071
    # low dose: same anatomy, more noise (noise measured in white matter, away from edges)
    wm = ndimage.binary_erosion(labels == L["wm"], structure=np.ones((3, 3, 1)), iterations=2)
    assert wm.sum() > 50
    assert im["ldct"][wm].std() > 1.5 * im["ct"][wm].std()
    assert abs(np.median(im["ldct"][wm]) - np.median(im["ct"][wm])) < 10
    assert np.std(im["ldpet"][wm]) > 1.5 * np.std(im["pet"][wm])
    # FDG: grey matter takes up more than white matter; CSF and air take up little
    assert _median(im["pet"], labels, "gm") > _median(im["pet"], labels, "wm")
    assert _median(im["pet"], labels, "background") < 0.1 * _median(im["pet"], labels, "wm")
    # CBCT: noisier than CT and blank (-1000) outside its cylindrical field of view
    assert im["cbct"][wm].std() > 1.5 * im["ct"][wm].std()
    assert im["cbct"][0, 0, 0] == -1000 and im["cbct"][0, -1, 0] == -1000


def test_pelvis_has_bone_air_fat_urine(tmp_path) -> None:
    subject = simulate(PhantomSpec(anatomy="pelvis", size=(96, 96, 1), seed=2), 0)
    labels, im = subject.labels, {k: v.astype(np.float64) for k, v in subject.images.items()}
    present = {LABELS[i] for i in np.unique(labels)}
    assert {"fat", "muscle", "bone", "marrow", "urine"} <= present
    assert _median(im["ct"], labels, "bone") >= 700
    assert _median(im["ct"], labels, "background") <= -900
    assert _median(im["ct"], labels, "fat") < -50 < _median(im["ct"], labels, "muscle")
    assert _median(im["t1"], labels, "fat") > 2 * _median(im["t1"], labels, "muscle")  # fat bright on T1
    assert _median(im["t2"], labels, "urine") > 3 * _median(im["t2"], labels, "muscle")
    assert _median(im["pet"], labels, "urine") > 3 * _median(im["pet"], labels, "muscle")  # FDG excreted


def test_mni_anatomy_comes_from_the_template() -> None:
    subject = simulate(PhantomSpec(anatomy="mni", size=(64, 72, 1), seed=0, modalities=("t1", "ct")), 0)
    labels, t1 = subject.labels, subject.images["t1"].astype(np.float64)
    present = {LABELS[i] for i in np.unique(labels)}
    assert {"gm", "wm", "csf", "bone", "fat"} <= present
    assert _median(t1, labels, "wm") > _median(t1, labels, "gm") > _median(t1, labels, "csf")
    assert _median(subject.images["ct"].astype(float), labels, "bone") >= 700


def test_same_seed_same_files_other_seed_other_subjects(tmp_path) -> None:
    spec = PhantomSpec(anatomy="brain", size=(24, 24, 12), seed=5)
    a, b = write_phantom(tmp_path / "a", spec, 2), write_phantom(tmp_path / "b", spec, 2, workers=2)
    c = write_phantom(tmp_path / "c", PhantomSpec(anatomy="brain", size=(24, 24, 12), seed=6), 2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    assert len(files) == 2 * (12 + 10)  # 10 modalities, mask, labels; 10 noise-free truth images
    for rel in files:
        assert np.array_equal(_read(a / rel), _read(b / rel)), rel
    assert not np.array_equal(_read(a / "sub-000/t1.nii.gz"), _read(c / "sub-000/t1.nii.gz"))
    assert not np.array_equal(_read(a / "sub-000/labels.nii.gz"), _read(a / "sub-001/labels.nii.gz"))
    assert json.loads((a / "dataset.json").read_text()) == json.loads((b / "dataset.json").read_text())


def test_a_subset_of_modalities_gives_the_same_images() -> None:
    full = simulate(PhantomSpec(size=(20, 20, 10), seed=4), 1)
    part = simulate(PhantomSpec(size=(20, 20, 10), seed=4, modalities=("t2", "ldct")), 1)
    assert set(part.images) == {"t2", "ldct"}
    assert np.array_equal(full.images["t2"], part.images["t2"])
    assert np.array_equal(full.images["ldct"], part.images["ldct"])


def test_dataset_json_records_units_labels_and_parameters(brain2d) -> None:
    meta = json.loads((brain2d / "dataset.json").read_text())
    assert meta["layout"] == "generic" and meta["dims"] == 2 and meta["size"] == [128, 128, 1]
    assert meta["modalities"]["ct"]["units"] == "HU" and meta["modalities"]["t1"]["units"] == "a.u."
    assert meta["labels"]["0"] == "background" and meta["labels"][str(L["bone"])] == "bone"
    assert meta["sequences_ms"]["flair"] == {"tr": 9000, "ti": 2500, "te": 100}
    sub = meta["subjects"]["sub-000"]
    lo, hi = meta["tissue_ranges"]["wm"]["t1"]
    assert lo <= sub["tissues"]["wm"]["t1"] <= hi
    assert sub["scanner"]["ldct"]["noise_hu"] == pytest.approx(2 * sub["scanner"]["ct"]["noise_hu"], rel=1e-3)
    assert len(sub["anatomy"]["lesions"]) >= 1


def test_phantom_cli_writes_the_generic_layout(tmp_path, run_cli) -> None:
    code, out, err = run_cli(
        "phantom",
        tmp_path / "ph",
        "--subjects",
        "2",
        "--dims",
        "2",
        "--size",
        "32x32",
        "--modalities",
        "t1,ct",
        "--seed",
        "1",
        "--workers",
        "1",
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "ph" / "sub-001").iterdir()) == [
        "ct.nii.gz",
        "labels.nii.gz",
        "mask.nii.gz",
        "t1.nii.gz",
        "truth",
    ]
    truth = tmp_path / "ph" / "sub-001" / "truth"
    assert sorted(p.name for p in truth.iterdir()) == ["ct.nii.gz", "t1.nii.gz"]
    assert _read(tmp_path / "ph" / "sub-001" / "t1.nii.gz").shape == (32, 32, 1)


def test_phantom_cli_voxel_size_sets_the_spacing(tmp_path, run_cli) -> None:
    code, _, err = run_cli("phantom", tmp_path / "ph", "--subjects", "1", "--size", "24x24x6",
                           "--modalities", "t1", "--voxel-mm", "2.5", "--workers", "1")
    assert code == 0, err
    image = nib.load(tmp_path / "ph" / "sub-000" / "t1.nii.gz")
    assert image.shape == (24, 24, 6)
    np.testing.assert_allclose(image.header.get_zooms(), (2.5, 2.5, 2.5))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--anatomy", "knee"], "--anatomy 'knee' is not known"),
        (["--size", "32x32"], "does not give 3 sizes"),
        (["--modalities", "t1,xray"], "unknown xray"),
    ],
)
def test_phantom_cli_bad_options_are_one_line_errors(tmp_path, run_cli, args, says) -> None:
    code, _, err = run_cli("phantom", tmp_path / "ph", *args)
    assert code == 2
    assert says in err and len(err.strip().splitlines()) == 1


def test_phantom_cli_refuses_a_non_empty_folder(tmp_path, run_cli) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_cli("phantom", tmp_path, "--size", "16x16x8", "-n", "1")
    assert code == 2 and "not an empty folder" in err
    assert (tmp_path / "keep.txt").read_text() == "mine"
