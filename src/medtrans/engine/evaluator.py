"""Evaluate synthetic images against references, subject by subject, under one named convention.

``evaluate(pred, ref, ...)`` matches subjects by id between a folder of predictions and a folder of
references (or a dataset in any layout ``medtrans.data.layouts`` reads), checks that every pair shares
one grid (or resamples the prediction onto the reference with ``resample=True``), computes a metric
preset per subject, and summarises over subjects (mean, std, median, IQR, bootstrap CI; paired
Wilcoxon p-values against a second model with ``compare``). ``EvaluationResult.write`` saves
``per_subject.csv`` and ``summary.json`` (with the conventions used) atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtrans import __version__
from medtrans.atomic import write_text
from medtrans.data.inputs import SubjectPair, match_subjects, refuse_synthetic
from medtrans.errors import MedtransError
from medtrans.metrics.distribution import FeatureExtractor, feature_distances
from medtrans.metrics.presets import Preset, evaluate_pair, get_preset
from medtrans.metrics.segmentation import segmentation_consistency
from medtrans.metrics.stats import paired_wilcoxon, summarise
from medtrans.metrics.uncertainty import calibration

GRID_TOLERANCE_MM = 1e-3
TRUTH_PREFIX = "truth_"
TRUTH_CONVENTION = (
    "truth_<metric>: the same preset and mask, the prediction against the subject's noise- and bias-free "
    "truth/<modality> image (a simulation's signal before acquisition effects) instead of the acquired "
    "reference"
)
STATISTICS = {
    "unit": "subject (one value per subject and metric; slices are never pooled across subjects)",
    "std": "sample standard deviation (ddof = 1)",
    "iqr": "75th - 25th percentile (linear interpolation)",
    "ci95": "percentile bootstrap of the mean, 10000 resamples of subjects (seed below)",
    "p_value": "two-sided paired Wilcoxon signed-rank test (scipy.stats.wilcoxon), prediction vs compare",
    "non_finite": "inf (PSNR of identical images) and NaN values are counted (n_inf, n_nan) and left out",
}


@dataclass
class EvaluationResult:
    """Per-subject values and their summary; ``write`` saves them."""

    preset: str
    metrics: list[str]
    per_subject: dict[str, dict[str, float]]
    compare_per_subject: dict[str, dict[str, float]] | None
    summary: dict = field(default_factory=dict)

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = ["subject", *self.metrics]
        if self.compare_per_subject is not None:
            header += [f"{m}_compare" for m in self.metrics]
        writer.writerow(header)
        for sid, values in self.per_subject.items():
            row = [sid, *(_fmt(values[m]) for m in self.metrics)]
            if self.compare_per_subject is not None:
                row += [_fmt(self.compare_per_subject[sid][m]) for m in self.metrics]
            writer.writerow(row)
        return buf.getvalue()

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``per_subject.csv`` and ``summary.json`` into ``out_dir`` (each atomically)."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise MedtransError(out, "is a file, not a folder", "give a folder for the evaluation outputs")
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / "per_subject.csv", out / "summary.json"
        write_text(csv_path, self.csv_text())
        write_text(json_path, json.dumps(_jsonable(self.summary), indent=2, allow_nan=False) + "\n")
        return csv_path, json_path


def _fmt(value: float) -> str:
    return repr(float(value))


def _jsonable(obj):
    """Floats that JSON cannot hold (NaN, inf) become strings, so the file stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _same_grid(a, b) -> bool:
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0, atol=GRID_TOLERANCE_MM))


def _on_grid(volume, reference, path: Path, ref_path: Path, resample: bool, order: int):
    """``volume`` on ``reference``'s grid: unchanged, resampled, or a clear error naming both files."""
    from medtrans.io.geometry import resample_like

    if _same_grid(volume, reference):
        return volume, False
    if not resample:
        raise MedtransError(
            path,
            f"is not on the grid of {ref_path} (shape {volume.shape} vs {reference.shape}"
            f", or affines differ by > {GRID_TOLERANCE_MM} mm)",
            "write predictions on the reference grid, or pass --resample",
        )
    return resample_like(volume, reference, order=order), True


def _mask_on_grid(pair: SubjectPair, ref, resample: bool) -> tuple[np.ndarray | None, bool]:
    """The subject's mask on the reference grid (nearest when resampled): (array or None, moved?)."""
    from medtrans.io import load

    if pair.mask is None:
        return None, False
    mvol, moved = _on_grid(load(pair.mask), ref, pair.mask, pair.ref, resample, order=0)
    return mvol.array, moved


def _score(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None, image: Path, ref_path: Path, preset: str,
    tissue_classes: int,
) -> dict[str, float]:
    """Metrics of one prediction (read from ``image``) against its reference, on one grid."""
    try:
        values = evaluate_pair(pred, ref, mask, preset=preset)
        if tissue_classes:
            seg = segmentation_consistency(pred, ref, mask, n_classes=tissue_classes)
            values.update({f"seg_{k}": v for k, v in seg.items()})
    except MedtransError as err:
        raise MedtransError(image, f"{err.problem} (reference {ref_path})", err.fix) from None
    return values


def _scores(
    array: np.ndarray, image: Path, ref: np.ndarray, truth: np.ndarray | None, mask: np.ndarray | None,
    pair: SubjectPair, preset: str, tissue_classes: int,
) -> dict[str, float]:
    """The preset's metrics against the reference, plus ``truth_<metric>`` against the truth if given."""
    values = _score(array, ref, mask, image, pair.ref, preset, tissue_classes)
    if truth is not None and pair.truth is not None:
        against = _score(array, truth, mask, image, pair.truth, preset, 0)
        values.update({f"{TRUTH_PREFIX}{k}": v for k, v in against.items()})
    return values


def _fid_range(spec: Preset, fid_range: tuple[float, float] | None) -> tuple[float, float]:
    if fid_range is not None:
        return fid_range
    if spec.fid_window is not None:
        return spec.fid_window
    raise MedtransError(
        None,
        "FID needs the intensity window the slices are scaled from",
        "pass --fid-range LO,HI (e.g. 0,1000 for MR in arbitrary units)",
    )


def _pooled(spec: Preset, per_subject: dict[str, dict[str, float]]) -> dict[str, float]:
    """The original's number for presets that average slices of all subjects together: per-subject
    means weighted by their slice counts."""
    counts = np.array([v["slices"] for v in per_subject.values()])
    values = per_subject.values()
    return {m: float(np.dot([v[m] for v in values], counts) / counts.sum()) for m in spec.pooled}


def _slices(array: np.ndarray) -> np.ndarray:
    """Axial slices (the last voxel axis) as an (N, H, W) stack."""
    return np.moveaxis(np.asarray(array), -1, 0)


def evaluate(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    preset: str = "default",
    resample: bool = False,
    compare: str | os.PathLike | None = None,
    ref_modality: str | None = None,
    tissue_classes: int = 0,
    fid: bool = False,
    extractor: str | os.PathLike | None = None,
    fid_range: tuple[float, float] | None = None,
    seed: int = 0,
    allow_synthetic: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvaluationResult:
    """Score every prediction in ``pred`` against its reference in ``ref`` under ``preset``.

    ``tissue_classes`` > 0 adds segmentation consistency (``seg_dice_*``: intensity classes fitted on the
    reference inside the mask). ``fid`` adds FID/KID over all axial slices (``extractor``: a TorchScript
    file, default the InceptionV3 of ``medtrans[fid]``; ``fid_range``: intensity window, default from
    the preset). A reference marked synthetic is refused unless ``allow_synthetic``. When every
    reference lies in a subject folder with ``truth/<modality>.*`` (the phantom's noise-free images), the
    predictions are also scored against those truths: ``truth_<metric>`` columns, same preset and mask.
    """
    from medtrans.io import load

    spec = get_preset(preset)
    net = FeatureExtractor(extractor) if fid else None
    window = _fid_range(spec, fid_range) if fid else None
    pairs, counts = match_subjects(pred, ref, mask=mask, compare=compare, ref_modality=ref_modality)
    per_subject: dict[str, dict[str, float]] = {}
    other: dict[str, dict[str, float]] | None = {} if compare is not None else None
    features: dict[str, list[np.ndarray]] = {"real": [], "pred": [], "compare": []}
    resampled = 0
    with_truth = bool(pairs) and all(p.truth is not None for p in pairs)
    for i, pair in enumerate(pairs):
        # The reference and mask are read once per subject, for the prediction and the compared one alike.
        ref_vol = load(pair.ref)
        refuse_synthetic(ref_vol, pair.ref, "reference", allow_synthetic)
        pred_vol, moved = _on_grid(load(pair.pred), ref_vol, pair.pred, pair.ref, resample, order=1)
        mask_arr, moved_mask = _mask_on_grid(pair, ref_vol, resample)
        r_arr = ref_vol.array
        truth = None
        if with_truth:
            assert pair.truth is not None
            truth = _on_grid(load(pair.truth), ref_vol, pair.truth, pair.ref, False, order=1)[0].array
        per_subject[pair.id] = _scores(pred_vol.array, pair.pred, r_arr, truth, mask_arr, pair, preset,
                                       tissue_classes)
        if pair.std is not None:  # calibration of the std map, in the target's units, inside the mask
            std_vol, _ = _on_grid(load(pair.std), ref_vol, pair.std, pair.ref, resample, order=1)
            per_subject[pair.id].update(calibration(pred_vol.array, r_arr, std_vol.array, mask_arr))
        resampled += moved or moved_mask
        if net is not None:
            features["real"].append(net.features(_slices(r_arr), window))
            features["pred"].append(net.features(_slices(pred_vol.array), window))
        if other is not None and pair.other is not None:
            o_vol, _ = _on_grid(load(pair.other), ref_vol, pair.other, pair.ref, resample, order=1)
            other[pair.id] = _scores(o_vol.array, pair.other, r_arr, truth, mask_arr, pair, preset,
                                     tissue_classes)
            if net is not None:
                features["compare"].append(net.features(_slices(o_vol.array), window))
        if progress is not None:
            progress(pair.id, i + 1, len(pairs))
    metrics = [m for m in next(iter(per_subject.values())) if all(m in v for v in per_subject.values())]
    summary: dict = {
        "medtrans_version": __version__,
        "preset": spec.name,
        "preset_summary": spec.summary,
        "expects": spec.expects,
        "conventions": {**spec.conventions, **({"truth": TRUTH_CONVENTION} if with_truth else {})},
        "statistics": {**STATISTICS, "seed": seed},
        "inputs": {
            "predictions": str(pred),
            "references": str(ref),
            "masks": None if mask is None else str(mask),
            "compare": None if compare is None else str(compare),
            "ref_modality": ref_modality,
            "resample": resample,
            "tissue_classes": tissue_classes,
        },
        "counts": {**counts, "resampled_subjects": resampled},
        "metrics": {m: summarise([per_subject[s][m] for s in per_subject], seed=seed) for m in metrics},
    }
    if spec.pooled:
        summary["pooled_over_slices"] = _pooled(spec, per_subject)
    if other is not None:
        summary["compare"] = {
            "metrics": {m: summarise([other[s][m] for s in other], seed=seed) for m in metrics},
            "wilcoxon": {
                m: paired_wilcoxon(
                    [per_subject[s][m] for s in per_subject], [other[s][m] for s in per_subject]
                )
                for m in metrics
            },
        }
    if net is not None:
        real = np.concatenate(features["real"])
        summary["distribution"] = {
            "extractor": str(net.path),
            "intensity_range": list(window),
            "slices": "axial (last voxel axis), all slices of all subjects pooled",
            "prediction": feature_distances(real, np.concatenate(features["pred"]), seed),
        }
        if features["compare"]:
            summary["distribution"]["compare"] = feature_distances(
                real, np.concatenate(features["compare"]), seed
            )
    return EvaluationResult(spec.name, metrics, per_subject, other, summary)

