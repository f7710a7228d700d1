"""``medtrans evaluate`` end to end on tiny NIfTI/MHA files, and the statistics it reports."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from medtrans.engine.evaluator import evaluate
from medtrans.errors import MedtransError
from medtrans.io import Volume, load, save
from medtrans.metrics import evaluate_pair
from medtrans.metrics.distribution import FeatureExtractor, fid
from medtrans.metrics.segmentation import segmentation_consistency
from medtrans.metrics.stats import bootstrap_ci, paired_wilcoxon, summarise

MEDTRANS = Path(sys.executable).parent / "medtrans"
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
AFFINE[:3, 3] = [-20.0, -30.0, 10.0]
IDS = ["s01", "s02", "s03", "s04", "s05"]


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(path))
    return path


def _case(seed: int, shape=(18, 16, 14)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    ct = np.where(radius < 0.8, 40.0, -1000.0) + np.where(radius < 0.3, 900.0, 0.0) + rng.normal(0, 10, shape)
    mask = (radius < 0.85).astype(np.uint8)
    return ct.astype(np.float32).astype(np.float64), mask


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    for i, sid in enumerate(IDS):
        ct, mask = _case(i)
        _write(root / "ref" / f"{sid}.nii.gz", ct)
        _write(root / "masks" / f"{sid}_mask.nii.gz", mask)
        pred = ct + rng.normal(0, 30 + 5 * i, ct.shape)
        if sid == "s02":  # any supported format: one prediction as MHA
            save(Volume(pred.astype(np.float32), AFFINE), root / "pred" / f"{sid}.mha")
        else:
            _write(root / "pred" / f"{sid}.nii.gz", pred)
        _write(root / "other" / sid / "sct.nii.gz", ct + rng.normal(0, 80, ct.shape))  # subject folders
        # a generic dataset: <subject>/{ct,mr,mask}.nii.gz
        _write(root / "dataset" / sid / "ct.nii.gz", ct)
        _write(root / "dataset" / sid / "mr.nii.gz", rng.random(ct.shape))
        _write(root / "dataset" / sid / "mask.nii.gz", mask)
    return {name: root / name for name in ("ref", "masks", "pred", "other", "dataset")} | {"root": root}


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def test_cli_end_to_end_matches_direct_metrics(folders):
    out = folders["root"] / "out"
    proc = subprocess.run(
        [
            str(MEDTRANS),
            "evaluate",
            str(folders["pred"]),
            str(folders["ref"]),
            "--mask",
            str(folders["masks"]),
            "--compare",
            str(folders["other"]),
            "--preset",
            "synthrad2023",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Wilcoxon" in proc.stdout and "5 subjects" in proc.stdout
    rows = list(csv.DictReader((out / "per_subject.csv").open()))
    assert [r["subject"] for r in rows] == IDS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "synthrad2023" and "ssim" in summary["conventions"]
    assert summary["counts"]["subjects"] == 5 and summary["counts"]["masked_subjects"] == 5
    maes, other_maes = [], []
    for row in rows:
        sid = row["subject"]
        ref = _load(folders["ref"] / f"{sid}.nii.gz")
        mask = _load(folders["masks"] / f"{sid}_mask.nii.gz")
        pred = load(folders["pred"] / (f"{sid}.mha" if sid == "s02" else f"{sid}.nii.gz")).array
        expected = evaluate_pair(pred, ref, mask, preset="synthrad2023")
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, abs=1e-9)
        maes.append(expected["mae"])
        other = evaluate_pair(_load(folders["other"] / sid / "sct.nii.gz"), ref, mask, preset="synthrad2023")
        other_maes.append(other["mae"])
        assert float(row["mae_compare"]) == pytest.approx(other["mae"], abs=1e-9)
    assert summary["metrics"]["mae"]["mean"] == pytest.approx(np.mean(maes))
    assert summary["metrics"]["mae"]["std"] == pytest.approx(np.std(maes, ddof=1))
    assert summary["compare"]["wilcoxon"]["mae"]["p_value"] == pytest.approx(
        wilcoxon(maes, other_maes).pvalue
    )


def test_cli_refuses_other_grids_unless_resample(folders, tmp_path):
    shifted = tmp_path / "pred"
    for sid in IDS[:2]:
        moved = AFFINE.copy()
        moved[0, 3] += 0.5
        _write(shifted / f"{sid}.nii.gz", _load(folders["ref"] / f"{sid}.nii.gz"), moved)
    proc = subprocess.run(
        [str(MEDTRANS), "evaluate", str(shifted), str(folders["ref"]), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        "s01.nii.gz" in proc.stderr and "is not on the grid of" in proc.stderr and "--resample" in proc.stderr
    )
    result = evaluate(shifted, folders["ref"], resample=True)
    assert result.summary["counts"]["resampled_subjects"] == 2
    assert set(result.per_subject) == {"s01", "s02"}


def test_dataset_reference_uses_its_masks_and_needs_a_modality(folders):
    with pytest.raises(MedtransError, match="several modalities"):
        evaluate(folders["pred"], folders["dataset"])
    # a prediction whose SYNTHETIC marking names its target picks that modality by itself
    marked = folders["root"] / "marked"
    save(
        Volume(_load(folders["pred"] / "s01.nii.gz"), AFFINE),
        marked / "s01.nii.gz",
        synthetic="SYNTHETIC by medtrans model=unit target=ct from=mr.nii.gz",
    )
    assert evaluate(marked, folders["dataset"]).summary["counts"]["reference_source"].endswith("modality ct")
    result = evaluate(folders["pred"], folders["dataset"], ref_modality="ct", preset="synthrad2025")
    assert result.summary["counts"]["masked_subjects"] == 5
    assert "generic" in result.summary["counts"]["reference_source"]
    ref = _load(folders["dataset"] / "s01" / "ct.nii.gz")
    mask = _load(folders["dataset"] / "s01" / "mask.nii.gz")
    expected = evaluate_pair(_load(folders["pred"] / "s01.nii.gz"), ref, mask, preset="synthrad2025")
    assert result.per_subject["s01"] == pytest.approx(expected, abs=1e-9)


def test_missing_reference_and_bad_folders_are_errors(folders, tmp_path):
    extra = tmp_path / "pred"
    _write(extra / "zz99.nii.gz", _case(9)[0])
    with pytest.raises(MedtransError, match="no reference for prediction"):
        evaluate(extra, folders["ref"])
    with pytest.raises(MedtransError, match="not a folder"):
        evaluate(tmp_path / "nothing", folders["ref"])
    with pytest.raises(MedtransError, match="no comparison prediction"):
        evaluate(folders["pred"], folders["ref"], compare=extra)


def test_summary_statistics():
    values = [1.0, 2.0, 4.0, 8.0, float("inf"), float("nan")]
    s = summarise(values, seed=3)
    finite = np.array([1.0, 2.0, 4.0, 8.0])
    assert (s["n"], s["n_inf"], s["n_nan"]) == (4, 1, 1)
    assert s["mean"] == pytest.approx(finite.mean()) and s["std"] == pytest.approx(finite.std(ddof=1))
    assert s["median"] == 3.0 and s["iqr"] == pytest.approx(
        np.percentile(finite, 75) - np.percentile(finite, 25)
    )
    lo, hi = s["ci95"]
    assert finite.min() <= lo < finite.mean() < hi <= finite.max()
    assert bootstrap_ci(finite, seed=3) == (lo, hi)  # seeded: reproducible
    a, b = [1.0, 2.5, 3.1, 4.7, 5.2, 6.9], [1.4, 2.0, 3.9, 4.1, 6.0, 7.5]
    assert paired_wilcoxon(a, b)["p_value"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert paired_wilcoxon(a, a)["p_value"] == 1.0


class _TinyExtractor(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_tissue_classes_and_fid_with_a_scripted_extractor(folders, tmp_path):
    path = tmp_path / "extractor.pt"
    torch.jit.save(torch.jit.script(_TinyExtractor()), str(path))
    result = evaluate(
        folders["pred"],
        folders["ref"],
        mask=folders["masks"],
        preset="synthrad2023",
        tissue_classes=3,
        fid=True,
        extractor=path,
        compare=folders["other"],
    )
    ref = _load(folders["ref"] / "s03.nii.gz")
    mask = _load(folders["masks"] / "s03_mask.nii.gz")
    seg = segmentation_consistency(_load(folders["pred"] / "s03.nii.gz"), ref, mask, n_classes=3)
    for key, value in seg.items():
        assert result.per_subject["s03"][f"seg_{key}"] == pytest.approx(value, nan_ok=True)
    dist = result.summary["distribution"]
    assert dist["prediction"]["n_real"] == 5 * 14 and dist["intensity_range"] == [-1024.0, 3000.0]
    net = FeatureExtractor(path)
    real = np.concatenate(
        [net.features(np.moveaxis(_load(folders["ref"] / f"{s}.nii.gz"), -1, 0), (-1024, 3000)) for s in IDS]
    )
    preds = np.concatenate(
        [
            net.features(np.moveaxis(load(p).array, -1, 0), (-1024, 3000))
            for p in sorted(folders["pred"].iterdir())
        ]
    )
    assert dist["prediction"]["fid"] == pytest.approx(fid(real, preds), rel=1e-9)
    assert dist["compare"]["fid"] > dist["prediction"]["fid"]  # the noisier model is further away
    with pytest.raises(MedtransError, match="fid-range"):
        evaluate(folders["pred"], folders["ref"], fid=True, extractor=path)


def test_compare_reads_each_reference_and_mask_once(folders, monkeypatch):
    import medtrans.io as mio

    reads: list[Path] = []
    real_load = mio.load

    def counting_load(path, **kwargs):
        reads.append(Path(path))
        return real_load(path, **kwargs)

    monkeypatch.setattr(mio, "load", counting_load)
    evaluate(folders["pred"], folders["ref"], mask=folders["masks"], compare=folders["other"])
    for folder in ("ref", "masks"):
        inside = [p for p in reads if p.parent == folders[folder]]
        assert len(inside) == len(IDS) == len(set(inside)), folder


def _tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_reference_is_refused_unless_allowed(folders, tmp_path):
    from medtrans.io import SyntheticInfo

    synth = tmp_path / "synth"
    for sid in IDS[:2]:
        info = SyntheticInfo(model="run:best", source=f"{sid}/mr.nii.gz", method="regression", target="ct")
        save(load(folders["ref"] / f"{sid}.nii.gz"), synth / f"{sid}.nii.gz", synthetic=info)
    before = _tree_digest(synth)
    out = tmp_path / "out"
    proc = subprocess.run([str(MEDTRANS), "evaluate", str(synth), str(synth), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "s01.nii.gz" in line and "marked synthetic (SYNTHETIC by medtrans target=ct" in line
    assert "--allow-synthetic" in line
    assert not out.exists() and _tree_digest(synth) == before
    proc = subprocess.run([str(MEDTRANS), "evaluate", str(synth), str(synth), "-o", str(out),
                           "--allow-synthetic"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "per_subject.csv").open()))
    assert [float(r["mae"]) for r in rows] == [0.0, 0.0]


def test_truth_columns_when_the_dataset_holds_noise_free_truths(folders, tmp_path):
    dataset = tmp_path / "dataset"
    truths = {}
    for i, sid in enumerate(IDS[:3]):
        ct, mask = _case(i)
        truths[sid] = _write(dataset / sid / "truth" / "ct.nii.gz", ct)  # the noise-free signal
        noisy = ct + np.random.default_rng(10 + i).normal(0, 25, ct.shape)
        _write(dataset / sid / "ct.nii.gz", noisy)
        _write(dataset / sid / "mr.nii.gz", np.random.default_rng(i).random(ct.shape))
        _write(dataset / sid / "mask.nii.gz", mask)
        _write(tmp_path / "pred" / f"{sid}.nii.gz", ct + 30.0 * np.sin(np.arange(ct.size).reshape(ct.shape)))
    pred = tmp_path / "pred"
    result = evaluate(pred, dataset, ref_modality="ct", preset="synthrad2023", compare=pred)
    assert result.metrics == ["mae", "psnr", "ssim", "truth_mae", "truth_psnr", "truth_ssim"]
    for sid, values in result.per_subject.items():
        p, mask = _load(pred / f"{sid}.nii.gz"), _load(dataset / sid / "mask.nii.gz")
        against_ref = evaluate_pair(p, _load(dataset / sid / "ct.nii.gz"), mask, preset="synthrad2023")
        against_truth = evaluate_pair(p, _load(truths[sid]), mask, preset="synthrad2023")
        for key in against_ref:
            assert values[key] == pytest.approx(against_ref[key], abs=1e-9)
            assert values[f"truth_{key}"] == pytest.approx(against_truth[key], abs=1e-9)
        assert values["truth_mae"] != pytest.approx(values["mae"], abs=1e-3)
    summary = result.summary
    assert "truth/<modality>" in summary["conventions"]["truth"]
    assert summary["counts"]["subjects_with_truth"] == 3
    assert summary["metrics"]["truth_mae"]["n"] == 3 and "truth_mae" in summary["compare"]["wilcoxon"]
    # without truths (the plain dataset) there are no truth columns
    assert "truth_mae" not in evaluate(pred, folders["dataset"], ref_modality="ct").metrics
