"""Normalisation, plan, prepared cache, samplers and splits on tiny phantom data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medtrans.data.layouts import open_dataset
from medtrans.data.normalise import Normaliser
from medtrans.data.plan import Plan, make_plan
from medtrans.data.prepare import PreparedCache
from medtrans.data.samplers import make_sampler
from medtrans.data.splits import load_splits, make_splits, save_splits
from medtrans.errors import MedtransError
from medtrans.io import Volume, load


# ---------------------------------------------------------------------------------------------- normalise
@pytest.mark.parametrize("modality", ["ct", "cbct", "t1", "flair", "pet"])
def test_normalise_then_inverse_is_identity_inside_the_range(modality) -> None:
    rng = np.random.default_rng(0)
    norm = Normaliser.for_modality(modality)
    image = {"ct": rng.uniform(-1024, 3000, (20, 20, 8)), "pet": rng.gamma(2.0, 2.0, (20, 20, 8))}
    array = image.get("ct" if modality in ("ct", "cbct") else modality, rng.uniform(50, 900, (20, 20, 8)))
    array = array.astype(np.float32)
    stats = norm.stats(array)
    if norm.kind == "mr_percentile":
        array = np.clip(array, stats["low"], stats["high"])
    y = norm.forward(array, stats)
    assert y.dtype == np.float32 and y.min() >= -1 and y.max() <= 1
    np.testing.assert_allclose(norm.inverse(y, stats), array, rtol=1e-5, atol=1e-3)


def test_ct_window_maps_the_synthrad_range_to_minus_one_one() -> None:
    norm = Normaliser.for_modality("ct")
    y = norm.forward(np.array([-2000.0, -1024.0, 988.0, 3000.0, 4000.0]), {})
    np.testing.assert_allclose(y, [-1, -1, 0, 1, 1], atol=1e-6)


def test_mr_percentiles_are_the_subjects_own() -> None:
    norm = Normaliser.for_modality("t2")
    array = np.arange(1, 1001, dtype=np.float32).reshape(10, 10, 10)
    stats = norm.stats(array)
    fg = array[array > 0.1 * np.percentile(array, 99)]
    assert stats["low"] == pytest.approx(np.percentile(fg, 0.5))
    assert stats["high"] == pytest.approx(np.percentile(fg, 99.5))


# ---------------------------------------------------------------------------------------------- plan
def test_plan_fingerprint_save_load_and_edit(tiny3d, tmp_path) -> None:
    ds = open_dataset(tiny3d)
    plan = make_plan(ds, ["t1", "t2"], "ct", dims="3d")
    assert plan.sources == ["t1", "t2"] and plan.target == "ct" and plan.subjects == ds.ids
    assert plan.spacing == [11.25, 11.25, 11.25] and plan.slice_axis == 2
    assert plan.patch_size == [32, 32, 16]
    assert plan.normalisation["ct"].kind == "ct_window" and plan.normalisation["t1"].kind == "mr_percentile"
    assert set(plan.fingerprint["modalities"]) == {"t1", "t2", "ct"}
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict() and again.hash() == plan.hash()
    data = json.loads(path.read_text())
    data["spacing"] = [2.0, 2.0, 2.0]
    edited = Plan.from_dict(data)
    assert edited.spacing == [2.0, 2.0, 2.0] and edited.hash() != plan.hash()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"dims": "4d"}, "'dims' is '4d'"),
        ({"spacing": [1, -1, 1]}, "'spacing' must be 3 positive numbers"),
        ({"patch_size": [64, 64]}, "'patch_size' must be 3 positive integers"),
        ({"sliceaxis": 1}, "unknown field(s) sliceaxis"),
        ({"target": "t1"}, "'target' 't1' is also a source"),
    ],
)
def test_plan_validation_names_the_field(tiny3d, tmp_path, change, says) -> None:
    data = make_plan(open_dataset(tiny3d), ["t1"], "ct", dims="3d").to_dict()
    data.update(change)
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(MedtransError) as err:
        Plan.load(tmp_path / "plan.json")
    assert says in str(err.value) and "plan.json" in str(err.value)


def test_plan_that_does_not_match_the_dataset(tiny3d) -> None:
    plan = make_plan(open_dataset(tiny3d), ["t1"], "ct")
    plan.sources = ["flair"]
    plan.normalisation["flair"] = Normaliser.for_modality("flair")
    with pytest.raises(MedtransError, match="plan needs flair but the dataset"):
        plan.check(open_dataset(tiny3d))


def test_model_space_round_trip_returns_to_the_source_grid(tiny3d) -> None:
    ds = open_dataset(tiny3d)
    plan = make_plan(ds, ["t1", "t2"], "ct")
    rec = ds.subjects[0]
    ras = {m: load(rec.images[m]) for m in ("t1", "t2", "ct")}
    # store the sources the other way round (LPS) to check orientation is undone
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    vols = {}
    for m, v in ras.items():
        aff = v.affine @ np.array([[-1, 0, 0, 31], [0, -1, 0, 31], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        vols[m] = Volume(v.array[::-1, ::-1, :].copy(), aff, dict(v.meta))
    assert vols["t1"].orientation == "LPS" and np.allclose(flip @ flip, np.eye(4))
    array, space = plan.to_model_space({"t1": vols["t1"], "t2": vols["t2"]})
    assert array.shape == (2, 32, 32, 16) and array.dtype == np.float32
    assert array.min() >= -1 and array.max() <= 1
    np.testing.assert_allclose(array[0], plan.normalisation["t1"].forward(ras["t1"].array, space.stats["t1"]))
    prediction = plan.normalisation["ct"].forward(ras["ct"].array.astype(np.float32), {})
    out = plan.from_model_space(prediction, space)
    assert out.shape == vols["t1"].shape and np.array_equal(out.affine, vols["t1"].affine)
    assert out.meta["modality"] == "ct" and out.meta["units"] == "HU"
    np.testing.assert_allclose(out.array, vols["ct"].array, atol=0.05)


def test_model_space_resamples_to_the_plan_spacing(tiny3d) -> None:
    ds = open_dataset(tiny3d)
    plan = make_plan(ds, ["t1"], "ct", spacing=[22.5, 22.5, 22.5])
    vol = load(ds.subjects[0].images["t1"])
    array, space = plan.to_model_space({"t1": vol})
    assert array.shape == (1, 16, 16, 8)
    out = plan.from_model_space(np.zeros(array.shape[1:], np.float32), space)
    assert out.shape == (32, 32, 16) and np.array_equal(out.affine, vol.affine)
    np.testing.assert_allclose(out.array, 988.0, atol=1e-3)  # 0 in model space = window centre
    with pytest.raises(MedtransError, match="needs source"):
        plan.to_model_space({"t2": vol})


def test_pet_target_from_low_count_pet_keeps_the_subjects_scale(tiny3d) -> None:
    ds = open_dataset(tiny3d)
    plan = make_plan(ds, ["ldpet"], "pet")
    assert plan.normalisation["pet"].kind == "pet_scale" and "scale" in plan.normalisation["pet"].reference
    rec = ds.subjects[1]
    ldpet, pet = load(rec.images["ldpet"]), load(rec.images["pet"])
    array, space = plan.to_model_space({"ldpet": ldpet})
    assert space.target_stats == {"scale": space.stats["ldpet"]["scale"]}
    # a prediction equal to the source (in the target's normalisation) comes back in the source's SUV
    prediction = plan.normalisation["pet"].forward(ldpet.array, space.target_stats)
    back = plan.from_model_space(prediction, space)
    np.testing.assert_allclose(back.array, ldpet.array, rtol=1e-4, atol=1e-4)
    assert abs(float(back.array.mean()) - float(pet.array.mean())) < 0.1 * float(pet.array.mean())


# ---------------------------------------------------------------------------------------------- cache
def test_prepared_cache_builds_once_and_rebuilds_on_plan_change(tiny3d, tmp_path) -> None:
    ds = open_dataset(tiny3d)
    plan = make_plan(ds, ["t1"], "ct")
    built: list[str] = []
    cache = PreparedCache(ds, plan, tmp_path, progress=built.append)
    assert built == ds.ids
    arr = cache.array("sub-000", "ct")
    assert isinstance(arr, np.memmap) and arr.dtype == np.float32 and arr.shape == (16, 32, 32)
    ct = load(ds.subject("sub-000").images["ct"]).array
    np.testing.assert_allclose(np.moveaxis(np.asarray(arr), 0, 2), plan.normalisation["ct"].forward(ct, {}))
    mask = np.moveaxis(np.asarray(cache.mask("sub-000")), 0, 2)
    assert np.array_equal(mask, load(ds.subject("sub-000").mask).array > 0)
    assert cache.slice_foreground("sub-000").tolist() == mask.sum(axis=(0, 1)).tolist()
    stamp = (cache.folder / "sub-000" / "ct.npy").stat().st_mtime_ns
    built.clear()
    again = PreparedCache(ds, plan, tmp_path, progress=built.append)
    assert built == [] and (again.folder / "sub-000" / "ct.npy").stat().st_mtime_ns == stamp
    other = make_plan(ds, ["t1", "t2"], "ct")
    built.clear()
    rebuilt = PreparedCache(ds, other, tmp_path, subject_ids=["sub-001"], progress=built.append)
    assert built == ["sub-001"] and rebuilt.folder != cache.folder
    with pytest.raises(MedtransError, match="sub-999"):
        PreparedCache(ds, plan, tmp_path, subject_ids=["sub-999"])


# ---------------------------------------------------------------------------------------------- samplers
@pytest.fixture(scope="module")
def cache(tiny3d, tmp_path_factory):
    ds = open_dataset(tiny3d)
    plan = make_plan(ds, ["t1", "t2"], "ct")
    return PreparedCache(ds, plan, tmp_path_factory.mktemp("cache"))


def test_2d_sampler_items_and_determinism(cache) -> None:
    ids = cache.subject_ids
    s = make_sampler(cache, ids, mode="2d", seed=3)
    assert len(s) == sum(int((cache.slice_foreground(i) > 0).sum()) for i in ids)
    item = s[0]
    assert item["source"].shape == (2, 32, 32) and item["target"].shape == (1, 32, 32)
    assert item["mask"].shape == (1, 32, 32) and item["source"].dtype == torch.float32
    assert item["mask"].sum() > 0 and item["subject"] in ids
    twin = make_sampler(cache, ids, mode="2d", seed=3)
    for i in (0, 5, len(s) - 1):
        assert torch.equal(s[i]["source"], twin[i]["source"]) and s[i]["subject"] == twin[i]["subject"]
    order0 = [s[i]["subject"] + str(float(s[i]["target"].sum())) for i in range(len(s))]
    s.set_epoch(1)
    order1 = [s[i]["subject"] + str(float(s[i]["target"].sum())) for i in range(len(s))]
    assert order0 != order1 and sorted(order0) == sorted(order1)  # same slices, another order
    s.set_epoch(0)
    assert [s[i]["subject"] + str(float(s[i]["target"].sum())) for i in range(len(s))] == order0


def test_2d_slice_matches_the_cached_volume(cache) -> None:
    s = make_sampler(cache, ["sub-002"], mode="2d", patch_size=(32, 32))
    item = s[0]
    t2 = np.moveaxis(np.asarray(cache.array("sub-002", "t2")), 0, 2)
    matches = [k for k in range(t2.shape[2]) if np.array_equal(item["source"][1].numpy(), t2[:, :, k])]
    assert len(matches) == 1


def test_2_5d_stacks_neighbours_like_the_predictor(cache) -> None:
    from medtrans.engine.inferers import context_stack

    s = make_sampler(cache, ["sub-001"], mode="2.5d", context=1, patch_size=(32, 32))
    item = s[0]
    assert item["source"].shape == (6, 32, 32)
    vol = np.stack([np.asarray(cache.array("sub-001", m)) for m in ("t1", "t2")])  # (C, S, H, W)
    centre = [
        k
        for k in range(vol.shape[1])
        if np.array_equal(item["target"][0].numpy(), np.asarray(cache.array("sub-001", "ct"))[k])
    ]
    expect = context_stack(torch.from_numpy(vol), torch.tensor(centre[:1]), 1)[0]
    assert torch.equal(item["source"], expect)


def test_3d_patches_are_foreground_weighted_and_padded(cache) -> None:
    s = make_sampler(
        cache, cache.subject_ids, mode="3d", patch_size=(16, 16, 16), samples_per_epoch=40, seed=1
    )
    assert len(s) == 40
    items = [s[i] for i in range(40)]
    assert all(
        it["source"].shape == (2, 16, 16, 16) and it["target"].shape == (1, 16, 16, 16) for it in items
    )
    assert np.mean([float(it["mask"].mean()) > 0 for it in items]) > 0.8
    big = make_sampler(cache, ["sub-000"], mode="3d", patch_size=(48, 32, 16))[0]
    assert big["source"].shape == (2, 48, 32, 16) and float(big["source"][:, :8].max()) == -1.0


def test_unpaired_targets_come_from_another_subject(cache) -> None:
    s = make_sampler(cache, cache.subject_ids, mode="2d", paired=False, seed=0)
    for i in range(10):
        item = s[i]
        assert item["target_subject"] != item["subject"]
    with pytest.raises(MedtransError, match="at least 2 subjects"):
        make_sampler(cache, ["sub-000"], mode="2d", paired=False)


def test_sampler_in_a_dataloader_gives_the_same_batches_with_workers(cache) -> None:
    sampler = make_sampler(cache, cache.subject_ids, mode="2.5d", seed=4)
    sampler.set_epoch(3)
    single = list(torch.utils.data.DataLoader(sampler, batch_size=4))
    workers = list(torch.utils.data.DataLoader(sampler, batch_size=4, num_workers=2))
    assert single[0]["source"].shape == (4, 6, 32, 32) and len(single[0]["subject"]) == 4
    assert len(single) == len(workers)
    for a, b in zip(single, workers, strict=True):
        assert torch.equal(a["source"], b["source"]) and a["subject"] == b["subject"]


# ---------------------------------------------------------------------------------------------- splits
def test_splits_are_disjoint_cover_all_and_are_seeded() -> None:
    ids = [f"s{i:02d}" for i in range(20)]
    splits = make_splits(ids, (0.7, 0.15, 0.15), seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [14, 3, 3]
    sets = [set(splits[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(ids)
    assert make_splits(list(reversed(ids)), seed=0) == splits
    assert make_splits(ids, seed=1) != splits


@pytest.mark.parametrize(("n", "counts"), [(1, [1, 0, 0]), (2, [1, 1, 0]), (3, [1, 1, 1]), (5, [3, 1, 1])])
def test_tiny_datasets_keep_a_training_subject(n, counts) -> None:
    splits = make_splits([f"s{i}" for i in range(n)])
    assert [len(splits[k]) for k in ("train", "val", "test")] == counts


def test_splits_file_round_trip_and_bad_files(tmp_path) -> None:
    splits = make_splits(["a", "b", "c", "d"], seed=2)
    path = save_splits(splits, tmp_path / "splits.json", seed=2, fractions=(0.7, 0.15, 0.15))
    assert load_splits(path, ids=["a", "b", "c", "d"]) == splits
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["a", "b"], "test": ["b"]}))
    with pytest.raises(MedtransError, match="'b' is in both train and test"):
        load_splits(tmp_path / "bad.json")
    with pytest.raises(MedtransError, match="not in the dataset"):
        load_splits(path, ids=["a", "b"])
    with pytest.raises(MedtransError, match="fractions"):
        make_splits(["a"], (0.5, 0.5, 0.5))


def test_plan_cli_writes_a_loadable_plan_and_warns_about_skipped_subjects(tiny3d, tmp_path, run_cli) -> None:
    code, out, err = run_cli(
        "plan",
        tiny3d,
        "--source",
        "t1",
        "-s",
        "T2",
        "--target",
        "ct",
        "--dims",
        "3d",
        "-o",
        tmp_path / "plan.json",
    )
    assert code == 0, err
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.sources == ["t1", "t2"] and plan.dims == "3d" and "3 subjects" in out
    # a dataset where one subject lacks the target: skipped with a warning, or an error under --strict
    data = tmp_path / "data"
    shutil.copytree(tiny3d, data)
    (data / "sub-002" / "ct.nii.gz").unlink()
    code, out, err = run_cli("plan", data, "-s", "t1", "-t", "ct", "-o", tmp_path / "p2.json")
    assert code == 0 and "skipping 1 subject(s) missing a modality: sub-002 (no ct)" in err
    assert Plan.load(tmp_path / "p2.json").subjects == ["sub-000", "sub-001"]
    code, _, err = run_cli("plan", data, "-s", "t1", "-t", "ct", "--strict", "-o", tmp_path / "p3.json")
    assert code == 2 and "sub-002 (no ct)" in err and not (tmp_path / "p3.json").exists()


def test_modalities_on_different_grids_are_resampled_onto_the_targets(tiny3d) -> None:
    plan = make_plan(open_dataset(tiny3d), ["t1"], "ct")
    plan.spacing = [2.0, 2.0, 2.0]
    x = np.arange(16, dtype=np.float32)
    t1 = Volume(np.broadcast_to(x[:, None, None], (16, 16, 8)).copy(), np.diag([1.0, 1.0, 1.0, 1.0]))
    ct_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_aff[:3, 3] = 0.5  # the 2 mm grid covers the same field of view as the 1 mm one
    ct = Volume(np.full((8, 8, 4), 40.0, np.float32), ct_aff)
    arrays, mask, stats, affine = plan.prepare_subject({"t1": t1, "ct": ct})
    assert arrays["t1"].shape == arrays["ct"].shape == mask.shape == (8, 8, 4)
    assert np.array_equal(affine, ct_aff)
    # t1 sampled at the 2 mm voxel centres (1 mm index 0.5, 2.5, …), then normalised with its own stats
    expected = plan.normalisation["t1"].forward(
        np.broadcast_to((2 * np.arange(8) + 0.5)[:, None, None], (8, 8, 4)), stats["t1"]
    )
    np.testing.assert_allclose(arrays["t1"], expected, atol=1e-5)
