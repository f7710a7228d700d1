"""Registration, alignment QA and N4 in the plan, on small misaligned phantoms (64×64×48 at 3.75 mm)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtrans.data import registration as reg
from medtrans.data.layouts import open_dataset
from medtrans.data.phantom import LABELS, PhantomSpec, smooth_field, write_phantom
from medtrans.data.plan import Plan, make_plan
from medtrans.data.prepare import ALIGNMENT_FILE, PreparedCache
from medtrans.errors import MedtransError
from medtrans.io import load
from medtrans.io.geometry import resample_like

SIZE = (64, 64, 48)


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory):
    """Two brain subjects; T2 and CT each moved by a random rigid transform of 3–6 mm and 3–6°."""
    out = tmp_path_factory.mktemp("misaligned")
    return write_phantom(
        out, PhantomSpec(size=SIZE, modalities=("t1", "t2", "ct"), seed=0, misalign=(6, 6)), 2
    )


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned")
    return write_phantom(out, PhantomSpec(size=SIZE, modalities=("t1", "t2"), seed=0), 1)


def _subject(root, sid):
    rec = open_dataset(root).subject(sid)
    return {m: load(p, modality=m) for m, p in rec.images.items()}, load(rec.mask)


def _applied(root, sid, modality) -> np.ndarray:
    """The true transform target world → T1 world: the inverse of the motion the phantom applied."""
    meta = json.loads((root / "dataset.json").read_text())
    return np.linalg.inv(np.array(meta["subjects"][sid]["misalignment"][modality]["matrix"]))


@pytest.mark.parametrize(("target", "sid"), [("t2", "sub-001"), ("ct", "sub-000")])
def test_rigid_registration_recovers_the_applied_transform(misaligned, target, sid) -> None:
    """N4 on the MR images first, as a physicist would: the phantom's bias fields (up to ±20 %, one
    per image) left 0.6–0.9 mm of error on T1→T2 without it."""
    ds = open_dataset(misaligned)
    plan = make_plan(ds, ["t1"], target, dims="3d", registration="rigid", max_intensity_subjects=1)
    plan.bias_correction = {m: {} for m in ("t1", target) if m != "ct"}
    volumes, mask = _subject(misaligned, sid)
    prepared = plan.prepare_subject({m: volumes[m] for m in plan.modalities}, mask, sid)
    truth = _applied(misaligned, sid, target)
    points = reg.world_points(prepared.mask > 0, prepared.affine)
    before = reg.target_registration_error(np.eye(4), truth, points)
    estimate = prepared.transforms["t1"]
    assert before > 3.0  # the phantom really moved it
    assert reg.target_registration_error(estimate, truth, points) < 0.5
    assert reg.motion(np.linalg.inv(estimate) @ truth, points[:1])[1] < 0.5  # degrees
    row = prepared.qa[0]
    assert row["metric"] == "mi" and row["nmi_after"] > row["nmi_before"] + 0.02
    assert not row["flagged"], row


def test_qa_flags_a_pair_left_misaligned_and_not_an_aligned_one(misaligned, aligned) -> None:
    rows = {}
    for name, root in (("misaligned", misaligned), ("aligned", aligned)):
        plan = make_plan(open_dataset(root), ["t1"], "t2", dims="3d", registration="none")
        volumes, mask = _subject(root, "sub-000")
        rows[name] = plan.prepare_subject({m: volumes[m] for m in ("t1", "t2")}, mask, "sub-000").qa[0]
    bad, good = rows["misaligned"], rows["aligned"]
    assert bad["flagged"] and "shift raises NMI" in bad["reason"] and bad["probe_gain"] > 0
    assert not good["flagged"] and good["probe_gain"] < 0
    assert good["nmi_after"] > bad["nmi_after"] and good["ncc_after"] is not None
    assert good["nmi_before"] == good["nmi_after"] and good["motion_mm"] == 0.0


def test_n4_halves_a_known_bias_field_and_is_the_same_at_training_and_prediction(aligned, tmp_path) -> None:
    clean = load(aligned / "sub-000" / "truth" / "t1.nii.gz")
    labels = np.asarray(load(aligned / "sub-000" / "labels.nii.gz").array)
    brain = np.isin(labels, [LABELS.index(t) for t in ("gm", "wm", "lesion")])
    field = np.exp(0.35 * smooth_field(np.random.default_rng(7), SIZE, 150.0, 3.75)).astype(np.float32)
    biased = clean.with_array(np.asarray(clean.array, np.float32) * field)
    plan = make_plan(open_dataset(aligned), ["t1"], "t2", dims="3d")
    plan.bias_correction = {"t1": {}}
    corrected = np.asarray(plan.correct("t1", biased).array)

    def cv(x: np.ndarray) -> float:
        return float(x.std() / x.mean())

    assert cv(field[brain]) > 0.1
    assert cv(corrected[brain] / np.asarray(clean.array)[brain]) < 0.5 * cv(field[brain])
    # the same correction at training (prepare_subject) and at prediction (to_model_space); fewer
    # iterations keep the test fast
    plan.bias_correction = {"t1": {"iterations": [10, 10]}}
    volumes, mask = _subject(aligned, "sub-000")
    volumes["t1"] = biased
    train = plan.prepare_subject(volumes, mask).arrays["t1"]
    predict, _ = plan.to_model_space({"t1": biased})
    np.testing.assert_array_equal(train, predict[0])
    saved = Plan.load(plan.save(tmp_path / "plan.json"))
    assert saved.bias_correction == plan.bias_correction and saved.hash() == plan.hash()
    plan.bias_correction = {}
    assert plan.hash() != saved.hash()


def test_cache_keeps_transforms_and_is_reused_without_registering_again(misaligned, tmp_path) -> None:
    ds = open_dataset(misaligned)
    plan = make_plan(ds, ["t1"], "ct", dims="3d", registration={"kind": "rigid", "iterations": 30})
    built: list[str] = []
    first = PreparedCache(ds, plan, tmp_path, subject_ids=["sub-000"], progress=built.append)
    csv = first.folder / ALIGNMENT_FILE
    stamp = (csv.stat().st_mtime_ns, (first.folder / "sub-000" / "t1.npy").stat().st_mtime_ns)
    rows = reg.read_csv(csv)
    assert built == ["sub-000"] and [(r["subject"], r["source"]) for r in rows] == [("sub-000", "t1")]
    again = PreparedCache(
        ds, Plan.from_dict(plan.to_dict()), tmp_path, subject_ids=["sub-000"], progress=built.append
    )
    assert built == ["sub-000"]  # nothing rebuilt, nothing registered
    assert (csv.stat().st_mtime_ns, (first.folder / "sub-000" / "t1.npy").stat().st_mtime_ns) == stamp
    np.testing.assert_array_equal(again.transforms("sub-000")["t1"], first.transforms("sub-000")["t1"])
    # the transform in the cache is the one the arrays were made with
    volumes, _ = _subject(misaligned, "sub-000")
    ct = load(misaligned / "sub-000" / "ct.nii.gz")
    t1 = resample_like(volumes["t1"], ct, order=1, transform=again.transforms("sub-000")["t1"])
    expected = plan.normalisation["t1"].forward(
        np.asarray(t1.array, np.float32), again.stats("sub-000")["t1"]
    )
    np.testing.assert_allclose(
        np.moveaxis(again.array("sub-000", "t1"), 0, plan.slice_axis), expected, atol=1e-6
    )
    plan.registration = {"kind": "none"}
    assert (
        PreparedCache(ds, plan, tmp_path, subject_ids=["sub-000"], progress=built.append).folder
        != first.folder
    )
    assert built == ["sub-000", "sub-000"]


def test_plan_validates_registration_and_excludes_subjects(misaligned, tmp_path) -> None:
    ds = open_dataset(misaligned)
    plan = make_plan(ds, ["t1"], "t2", dims="3d", registration="affine", exclude=["sub-001"])
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert loaded.registration == {"kind": "affine"} and loaded.check(ds).ids == ["sub-000"]
    data = plan.to_dict()
    data["registration"] = {"kind": "elastic", "speed": 1}
    with pytest.raises(
        MedtransError, match="registration.speed.*not a known key.*registration.kind.*must be one of"
    ):
        Plan.from_dict(data)
    with pytest.raises(MedtransError, match="N4 is for MR"):
        make_plan(ds, ["t1"], "ct", bias_correction=["ct"])


def test_phantom_truth_is_noise_free_moves_with_its_modality_and_is_not_a_modality(misaligned) -> None:
    ds = open_dataset(misaligned)
    assert ds.modalities == ["ct", "t1", "t2"] and not ds.problems
    meta = json.loads((misaligned / "dataset.json").read_text())
    assert meta["truth"]["files"] == "<subject>/truth/<modality>.nii.gz"
    sub = meta["subjects"]["sub-000"]
    assert set(sub["misalignment"]) == {"t2", "ct"} and meta["misalignment"]["reference"] == "t1"
    shift = np.linalg.norm(sub["misalignment"]["ct"]["translation_mm"])
    assert 3.0 <= shift <= 6.0 and 3.0 <= sub["misalignment"]["ct"]["rotation_deg"] <= 6.0
    ct, truth = (
        load(misaligned / "sub-000" / "ct.nii.gz"),
        load(misaligned / "sub-000" / "truth" / "ct.nii.gz"),
    )
    assert np.array_equal(ct.affine, truth.affine) and ct.shape == truth.shape
    body = np.asarray(truth.array) > -500
    residual = (np.asarray(ct.array, np.float32) - np.asarray(truth.array))[body]
    # only the CT noise is left (a truth that had not moved with the CT would differ by bone edges)
    assert residual.std() < 1.5 * sub["scanner"]["ct"]["noise_hu"]


def test_cli_phantom_misalign_plan_qa_exclude_and_info(tmp_path, run_cli) -> None:
    root = tmp_path / "ph"
    code, _, err = run_cli(
        "phantom",
        root,
        "-n",
        "2",
        "--size",
        "48x48x36",
        "--modalities",
        "t1,t2",
        "--misalign",
        "6,6",
        "--workers",
        "1",
    )
    assert code == 0, err
    moved = json.loads((root / "dataset.json").read_text())["subjects"]["sub-001"]["misalignment"]["t2"]
    assert np.allclose(np.linalg.det(np.array(moved["matrix"])[:3, :3]), 1.0)
    plan_path = tmp_path / "run" / "plan.json"
    code, out, err = run_cli(
        "plan",
        root,
        "-s",
        "t1",
        "-t",
        "t2",
        "--dims",
        "3d",
        "--register",
        "none",
        "--exclude-flagged",
        "-o",
        plan_path,
    )
    assert code == 0, err
    rows = reg.read_csv(tmp_path / "run" / "alignment.csv")
    assert [r["flagged"] for r in rows] == [True, True] and "FLAGGED" in out
    assert Plan.load(plan_path).exclude == ["sub-000", "sub-001"]
    assert set(json.loads((tmp_path / "run" / "transforms.json").read_text())["subjects"]) == {
        "sub-000",
        "sub-001",
    }
    code, out, err = run_cli("info", root, "--alignment", tmp_path / "run")
    assert code == 0, err
    assert "2 pair(s), 2 flagged" in out and "sub-000 t1→t2: NMI" in out
    code, _, err = run_cli("phantom", tmp_path / "bad", "--misalign", "6")
    assert code == 2 and "--misalign '6' is not MM,DEG" in err
