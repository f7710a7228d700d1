"""Trivial baselines the benchmark scores beside its entries: what an intensity map alone achieves.

A model that has learnt nothing about anatomy can still remap intensities. Two such maps, fitted on the
benchmark's *training* subjects inside the evaluation mask and applied voxel by voxel to the test
sources, are the bar every entry must clear to show it learnt something spatial:

- ``linear``: target ≈ a · sources + b, least squares over all training voxels (every source).
- ``lookup``: target ≈ E[target | first source], the conditional mean in quantile bins of the first
  source, linearly interpolated between bin centres — the best any voxel-wise map of that source can
  do in L2 on the training data, so it also captures a contrast inversion that is not monotonic.
- ``quantile``: histogram matching, the first source's training quantiles mapped onto the target's.
  It uses the two marginal histograms only, never which voxel pairs with which: the bar for UNPAIRED
  methods (unit, cyclegan), which cannot fit the paired maps above. Being monotonic, it cannot invert
  a contrast (T1 → T2), which is what such a method must learn from the images.

None sees a test target (unlike the demo's per-subject linear fit, which is an oracle).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: voxels drawn from the training subjects to fit a map (enough for 64 bins; bounded memory)
MAX_FIT_VOXELS = 2_000_000
LOOKUP_BINS = 64

Map = Callable[[list[np.ndarray]], np.ndarray]


def fit_linear(sources: list[np.ndarray], target: np.ndarray) -> Map:
    """Least-squares ``a · sources + b`` (one coefficient per source)."""
    design = np.column_stack([*(s.astype(np.float64) for s in sources), np.ones(target.size)])
    coef, *_ = np.linalg.lstsq(design, target.astype(np.float64), rcond=None)

    def apply(arrays: list[np.ndarray]) -> np.ndarray:
        out = np.full(arrays[0].shape, coef[-1])
        for c, a in zip(coef[:-1], arrays, strict=True):
            out += c * a
        return out.astype(np.float32)

    return apply


def fit_lookup(sources: list[np.ndarray], target: np.ndarray, bins: int = LOOKUP_BINS) -> Map:
    """The conditional mean of the target in quantile bins of the first source, interpolated."""
    source = sources[0].astype(np.float64)
    edges = np.unique(np.quantile(source, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, source, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    keep = counts > 0
    centres = (np.bincount(which, source, len(edges) - 1)[keep] / counts[keep])
    means = (np.bincount(which, target.astype(np.float64), len(edges) - 1)[keep] / counts[keep])

    def apply(arrays: list[np.ndarray]) -> np.ndarray:
        return np.interp(arrays[0], centres, means).astype(np.float32)

    return apply


#: quantile levels of the histogram match (a 0.1 % grid: finer than any bin the lookup resolves)
QUANTILE_LEVELS = 1001


def fit_quantile(sources: list[np.ndarray], target: np.ndarray, levels: int = QUANTILE_LEVELS) -> Map:
    """Histogram matching of the first source onto the target: monotonic, from the marginals alone."""
    grid = np.linspace(0, 1, levels)
    source_q = np.quantile(sources[0].astype(np.float64), grid)
    target_q = np.quantile(target.astype(np.float64), grid)
    # flat stretches of the source histogram (ties) would give np.interp repeated x: keep the first
    source_q, first = np.unique(source_q, return_index=True)
    target_q = target_q[first]

    def apply(arrays: list[np.ndarray]) -> np.ndarray:
        return np.interp(arrays[0], source_q, target_q).astype(np.float32)

    return apply


BASELINES: dict[str, tuple[Callable[[list[np.ndarray], np.ndarray], Map], str]] = {
    "linear": (fit_linear, "least-squares linear map of the sources, fitted on the training subjects"),
    "lookup": (fit_lookup, f"conditional mean of the target in {LOOKUP_BINS} quantile bins of the first "
               "source, fitted on the training subjects"),
    "quantile": (fit_quantile, "histogram matching of the first source onto the target (marginals only: "
                 "the unpaired bar), fitted on the training subjects"),
}


def _mask_path(record: Any, mask_folder: Path | None) -> Path | None:
    if mask_folder is None:
        return record.mask
    from medtrans.io import split_image_name

    found = [p for p in mask_folder.iterdir() if (split_image_name(p.name) or ("",))[0] == record.id]
    return found[0] if found else None


def _training_voxels(dataset: Any, subjects: list[str], sources: list[str], target: str,
                     mask_folder: Path | None, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    from medtrans.io import load

    columns: list[list[np.ndarray]] = [[] for _ in sources]
    values: list[np.ndarray] = []
    for sid in subjects:
        record = dataset.subject(sid)
        mask_file = _mask_path(record, mask_folder)
        tgt = load(record.images[target]).array
        inside = np.ones(tgt.shape, bool) if mask_file is None else load(mask_file).array > 0
        values.append(tgt[inside])
        for column, name in zip(columns, sources, strict=True):
            column.append(load(record.images[name]).array[inside])
    target_voxels = np.concatenate(values)
    source_voxels = [np.concatenate(c) for c in columns]
    if target_voxels.size > MAX_FIT_VOXELS:
        pick = np.random.default_rng(seed).choice(target_voxels.size, MAX_FIT_VOXELS, replace=False)
        target_voxels, source_voxels = target_voxels[pick], [s[pick] for s in source_voxels]
    return source_voxels, target_voxels


def run_baselines(root: Path, layout: str | None, sources: list[str], target: str,
                  splits: dict[str, list[str]], mask: str | None, preset: str, out: Path,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """Fit every baseline on ``splits['train']``, predict ``splits['test']`` into ``out/<name>`` and score
    it like an entry; returns ``{"baseline-<name>": record}`` in the harness's record format."""
    from medtrans.data.layouts import open_dataset
    from medtrans.engine.evaluator import evaluate
    from medtrans.io import SyntheticInfo, load, save

    dataset = open_dataset(root, layout=layout)
    mask_folder = None if mask is None else Path(mask)
    fit_sources, fit_target = _training_voxels(dataset, splits["train"], sources, target, mask_folder, seed)
    records = {}
    for name, (fit, how) in BASELINES.items():
        start = time.perf_counter()
        apply = fit(fit_sources, fit_target)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for sid in splits["test"]:
            record = dataset.subject(sid)
            volumes = [load(record.images[s]) for s in sources]
            info = SyntheticInfo(model=f"baseline-{name}", source=str(record.images[sources[0]]),
                                 method=how, target=target)
            save(volumes[0].with_array(apply([v.array for v in volumes]), modality=target),
                 folder / f"{sid}.nii.gz", synthetic=info)
        predicted = time.perf_counter()
        result = evaluate(folder, root, mask=mask, preset=preset)
        result.write(folder.parent / f"{name}_eval")
        records[f"baseline-{name}"] = {
            "status": "done", "evaluate": True, "entry": f"baseline-{name}", "baseline": how,
            "train_steps": 0, "parameters": None,
            "mean": {"samples": 1, "steps": None, "evaluations_per_voxel": 0,
                     "s_per_volume": (predicted - start) / max(1, len(splits["test"])),
                     "per_subject": result.per_subject, "predict_seconds": predicted - start,
                     "evaluate_seconds": time.perf_counter() - predicted}}
    return records
