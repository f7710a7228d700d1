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
from medtrans.errors import MedtransError
from medtrans.io.api import marked_target
from medtrans.metrics.distribution import FeatureExtractor, feature_distances
from medtrans.metrics.presets import Preset, evaluate_pair, get_preset
from medtrans.metrics.segmentation import segmentation_consistency
from medtrans.metrics.stats import paired_wilcoxon, summarise
from medtrans.metrics.uncertainty import calibration

GRID_TOLERANCE_MM = 1e-3
_IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy")
STATISTICS = {
    "unit": "subject (one value per subject and metric; slices are never pooled across subjects)",
    "std": "sample standard deviation (ddof = 1)",
    "iqr": "75th - 25th percentile (linear interpolation)",
    "ci95": "percentile bootstrap of the mean, 10000 resamples of subjects (seed below)",
    "p_value": "two-sided paired Wilcoxon signed-rank test (scipy.stats.wilcoxon), prediction vs compare",
    "non_finite": "inf (PSNR of identical images) and NaN values are counted (n_inf, n_nan) and left out",
}


@dataclass
class SubjectPair:
    """One subject's files: prediction, reference, optional mask and optional second prediction."""

    id: str
    pred: Path
    ref: Path
    mask: Path | None = None
    other: Path | None = None
    std: Path | None = None  # the prediction's uncertainty map, ``<name>_<target>_std``


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


def _image_stem(path: Path) -> str | None:
    lower = path.name.lower()
    for ext in _IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return path.name[: -len(ext)]
    return None


def _is_dicom_folder(folder: Path) -> bool:
    from medtrans.io.dicom import is_dicom_file

    return any(f.is_file() and (f.suffix.lower() == ".dcm" or is_dicom_file(f)) for f in folder.iterdir())


def image_folder(folder: Path) -> dict[str, Path]:
    """id -> image for a folder of ``<id>.<ext>`` files, ``<id>/`` folders holding one image, or
    ``<id>/`` DICOM series folders."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and (stem := _image_stem(entry)) is not None:
            found[stem] = entry
        elif entry.is_dir():
            images = [f for f in sorted(entry.iterdir()) if f.is_file() and _image_stem(f) is not None]
            if len(images) == 1:
                found[entry.name] = images[0]
            elif not images and _is_dicom_folder(entry):
                found[entry.name] = entry
    return found


def split_uncertainty(found: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """(predictions, prediction name → its std map): ``<name>_<target>_std`` beside ``<name>`` is the
    uncertainty map ``medtrans predict`` writes, not a prediction of its own."""
    stds = {}
    for stem in list(found):
        parts = stem.rsplit("_", 2)
        if len(parts) == 3 and parts[2] == "std" and parts[0] in found:
            stds[parts[0]] = found.pop(stem)
    return found, stds


def _match_id(name: str, ids: list[str]) -> str | None:
    """The reference id for a prediction name: exact, else the longest id it starts with (``1BA001_sct``)."""
    if name in ids:
        return name
    hits = [i for i in ids if name.startswith(i) and name[len(i)] in "_-."]
    return max(hits, key=len) if hits else None


def _references(ref: Path, ref_modality: str | None, pred_modality: str | None):
    """(id -> reference image, id -> dataset mask, description): a flat folder or a dataset layout."""
    from medtrans.data.layouts import open_dataset
    from medtrans.data.modalities import canonical

    try:
        dataset = open_dataset(ref)
    except MedtransError:
        flat = image_folder(ref)
        if not flat:
            raise MedtransError(
                ref,
                "holds no reference images (no <subject>.nii.gz/.mha files and no known dataset layout)",
                "give a folder of <subject> images or a dataset root",
            ) from None
        return flat, {}, "folder"
    modalities = dataset.modalities
    if ref_modality is not None:
        chosen = canonical(ref_modality)
    elif pred_modality is not None and pred_modality in modalities:
        chosen = pred_modality
    elif len(modalities) == 1:
        chosen = modalities[0]
    else:
        raise MedtransError(
            ref,
            f"the dataset has several modalities ({', '.join(modalities)}) and the "
            "predictions do not say which they synthesise",
            "pass --ref-modality, e.g. ct",
        )
    images = {s.id: s.images[chosen] for s in dataset.subjects if chosen in s.images}
    if not images:
        raise MedtransError(
            ref,
            f"no subject has modality {chosen!r} (found {', '.join(modalities)})",
            "pass --ref-modality with one of these",
        )
    masks = {s.id: s.mask for s in dataset.subjects if s.mask is not None}
    return images, masks, f"dataset layout {dataset.layout}, modality {chosen}"


def _mask_folder(folder: Path, ids: list[str]) -> dict[str, Path]:
    """id -> mask from ``<id>.<ext>``, ``<id>_mask.<ext>`` (any suffix) or ``<id>/mask.<ext>``."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and (stem := _image_stem(entry)) is not None:
            sid = _match_id(stem, ids)
        elif entry.is_dir() and entry.name in ids:
            files = [
                f for f in sorted(entry.iterdir()) if (_image_stem(f) or "").lower() in ("mask", entry.name)
            ]
            sid, entry = (entry.name, files[0]) if files else (None, entry)
        else:
            sid = None
        if sid is not None and sid not in found:
            found[sid] = entry
    return found


def _target_modality(volume) -> str | None:
    """What a prediction synthesises: a ``target=<modality>`` in its SYNTHETIC marking, else its modality."""
    return marked_target(volume) or volume.modality


def match_subjects(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    compare: str | os.PathLike | None = None,
    ref_modality: str | None = None,
) -> tuple[list[SubjectPair], dict]:
    """Pair every prediction with its reference (and mask, and second prediction) by subject id."""
    from medtrans.io import load

    pred, ref = Path(pred), Path(ref)
    for path, role in ((pred, "predictions"), (ref, "references"), (mask, "masks"), (compare, "compare")):
        if path is not None and not Path(path).is_dir():
            raise MedtransError(path, f"is not a folder ({role})", f"give the folder that holds the {role}")
    preds, stds = split_uncertainty(image_folder(pred))
    if not preds:
        raise MedtransError(
            pred, "holds no prediction images", "give a folder of <subject>.nii.gz or .mha files"
        )
    first_modality = _target_modality(load(next(iter(preds.values()))))
    refs, dataset_masks, ref_kind = _references(ref, ref_modality, first_modality)
    ref_ids = sorted(refs)
    pairs, missing = [], []
    for name, path in preds.items():
        sid = _match_id(name, ref_ids)
        if sid is None:
            missing.append(name)
        else:
            pairs.append(SubjectPair(sid, path, refs[sid], dataset_masks.get(sid), std=stds.get(name)))
    if missing:
        raise MedtransError(
            ref,
            f"no reference for prediction(s) {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}",
            "name predictions <subject>.<ext> with the reference's subject ids",
        )
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        raise MedtransError(pred, "two predictions match the same subject", "keep one prediction per subject")
    if mask is not None:
        masks = _mask_folder(Path(mask), ids)
        absent = [i for i in ids if i not in masks]
        if absent:
            raise MedtransError(
                mask,
                f"no mask for subject(s) {', '.join(absent[:10])}",
                "add <subject>.nii.gz masks, or leave out --mask",
            )
        for p in pairs:
            p.mask = masks[p.id]
    if compare is not None:
        others, _ = split_uncertainty(image_folder(Path(compare)))
        other_ids = {(_match_id(n, ids) or n): path for n, path in others.items()}
        absent = [i for i in ids if i not in other_ids]
        if absent:
            raise MedtransError(
                compare,
                f"no comparison prediction for subject(s) {', '.join(absent[:10])}",
                "the paired test needs both models on the same subjects",
            )
        for p in pairs:
            p.other = other_ids[p.id]
    counts = {
        "subjects": len(pairs),
        "predictions": len(preds),
        "references": len(refs),
        "references_without_prediction": len(set(refs) - set(ids)),
        "masked_subjects": sum(p.mask is not None for p in pairs),
        "uncertainty_maps": sum(p.std is not None for p in pairs),
    }
    return pairs, {"reference_source": ref_kind, **counts}


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
    progress: Callable[[str, int, int], None] | None = None,
) -> EvaluationResult:
    """Score every prediction in ``pred`` against its reference in ``ref`` under ``preset``.

    ``tissue_classes`` > 0 adds segmentation consistency (``seg_dice_*``: intensity classes fitted on the
    reference inside the mask). ``fid`` adds FID/KID over all axial slices (``extractor``: a TorchScript
    file, default the InceptionV3 of ``medtrans[fid]``; ``fid_range``: intensity window, default from
    the preset).
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
    for i, pair in enumerate(pairs):
        # The reference and mask are read once per subject, for the prediction and the compared one alike.
        ref_vol = load(pair.ref)
        pred_vol, moved = _on_grid(load(pair.pred), ref_vol, pair.pred, pair.ref, resample, order=1)
        mask_arr, moved_mask = _mask_on_grid(pair, ref_vol, resample)
        r_arr = ref_vol.array
        per_subject[pair.id] = _score(
            pred_vol.array, r_arr, mask_arr, pair.pred, pair.ref, preset, tissue_classes
        )
        if pair.std is not None:  # calibration of the std map, in the target's units, inside the mask
            std_vol, _ = _on_grid(load(pair.std), ref_vol, pair.std, pair.ref, resample, order=1)
            per_subject[pair.id].update(calibration(pred_vol.array, r_arr, std_vol.array, mask_arr))
        resampled += moved or moved_mask
        if net is not None:
            features["real"].append(net.features(_slices(r_arr), window))
            features["pred"].append(net.features(_slices(pred_vol.array), window))
        if other is not None and pair.other is not None:
            o_vol, _ = _on_grid(load(pair.other), ref_vol, pair.other, pair.ref, resample, order=1)
            other[pair.id] = _score(
                o_vol.array, r_arr, mask_arr, pair.other, pair.ref, preset, tissue_classes
            )
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
        "conventions": spec.conventions,
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

