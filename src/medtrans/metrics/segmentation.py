"""Segmentation consistency: segment tissues of the synthetic and the real image the same way, then Dice.

A synthetic image can score well on PSNR while moving tissue boundaries (a blurred skull, a shifted
ventricle); a task-based check catches that. Default procedure (no external model): fit intensity
classes on the *real* image inside the mask (1D k-means from evenly spaced centres, optionally
refined by a Gaussian mixture), then label both images with that same model, so intensity shifts of
the synthetic image count against it. Or pass ``segmenter``: any callable image -> integer labels
(e.g. a trained network) applied to both images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medtrans.errors import MedtransError
from medtrans.metrics._common import ArrayLike, check_mask, check_pair


def kmeans_1d(values: np.ndarray, n_classes: int, iterations: int = 100) -> np.ndarray:
    """Sorted class centres of 1D k-means, initialised evenly between the 1st and 99th percentiles
    (deterministic; quantile starts would split a large background class and miss a small bright one)."""
    centres = np.linspace(*np.percentile(values, [1, 99]), n_classes)
    for _ in range(iterations):
        labels = _nearest(values, centres)
        new = np.array(
            [values[labels == k].mean() if np.any(labels == k) else centres[k] for k in range(n_classes)]
        )
        if np.allclose(new, centres, rtol=0, atol=1e-12 * max(1.0, float(np.abs(values).max()))):
            break
        centres = new
    return np.sort(centres)


def _nearest(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.abs(values[:, None] - centres[None, :]).argmin(axis=1)


def gmm_1d(
    values: np.ndarray, n_classes: int, iterations: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, variances) of a 1D Gaussian mixture fitted by EM from the k-means solution."""
    centres = kmeans_1d(values, n_classes)
    labels = _nearest(values, centres)
    floor = 1e-6 * float(values.var()) + 1e-12
    weights = np.array([np.mean(labels == k) for k in range(n_classes)])
    variances = np.array(
        [
            max(float(values[labels == k].var()) if np.any(labels == k) else floor, floor)
            for k in range(n_classes)
        ]
    )
    means = centres.astype(np.float64)
    for _ in range(iterations):
        resp = _responsibilities(values, weights, means, variances)
        nk = resp.sum(axis=0) + 1e-300
        weights = nk / values.size
        new_means = (resp * values[:, None]).sum(axis=0) / nk
        variances = np.maximum((resp * (values[:, None] - new_means) ** 2).sum(axis=0) / nk, floor)
        converged = np.allclose(new_means, means, rtol=1e-10, atol=0)
        means = new_means
        if converged:
            break
    order = np.argsort(means)
    return weights[order], means[order], variances[order]


def _responsibilities(values, weights, means, variances) -> np.ndarray:
    log = (
        np.log(weights + 1e-300)
        - 0.5 * np.log(2 * np.pi * variances)
        - (values[:, None] - means) ** 2 / (2 * variances)
    )
    log -= log.max(axis=1, keepdims=True)
    resp = np.exp(log)
    return resp / resp.sum(axis=1, keepdims=True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """``2 |A & B| / (|A| + |B|)``; NaN when the class is absent from both."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else float("nan")


def segmentation_consistency(
    pred: ArrayLike,
    ref: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    n_classes: int = 3,
    method: str = "kmeans",
    segmenter: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Dice per tissue class between segmentations of ``pred`` and ``ref`` (inside ``mask``), and their mean.

    Keys: ``dice_class<k>`` (k = 1 for the darkest class with the intensity model, else the label
    value) and ``dice_mean`` (mean over classes present in either image).
    """
    p, r = check_pair(pred, ref)
    m = check_mask(mask, tuple(p.shape), p.device)
    p_np, r_np = p.cpu().numpy(), r.cpu().numpy()
    inside = np.ones(p_np.shape, bool) if m is None else m.cpu().numpy()
    if segmenter is not None:
        lp, lr = (np.asarray(segmenter(x)) for x in (p_np, r_np))
        if lp.shape != p_np.shape or lr.shape != r_np.shape:
            raise MedtransError(
                None,
                "segmenter returned labels of another shape than the image",
                "return one integer label per voxel",
            )
        lp, lr = np.where(inside, lp, 0), np.where(inside, lr, 0)
        classes = sorted(int(c) for c in np.union1d(np.unique(lp), np.unique(lr)) if c > 0)
        scores = {f"dice_class{c}": dice(lp == c, lr == c) for c in classes}
    else:
        if n_classes < 2:
            raise MedtransError(None, f"n_classes must be >= 2, got {n_classes}", "use 3 (e.g. CSF, GM, WM)")
        values = r_np[inside]
        if np.unique(values).size < n_classes:
            raise MedtransError(
                None,
                f"the reference has fewer than {n_classes} distinct values in the mask",
                "use fewer classes or check the mask",
            )
        if method == "kmeans":
            centres = kmeans_1d(values, n_classes)
            lr, lp = _nearest(values, centres), _nearest(p_np[inside], centres)
        elif method == "gmm":
            params = gmm_1d(values, n_classes)
            lr = _responsibilities(values, *params).argmax(axis=1)
            lp = _responsibilities(p_np[inside], *params).argmax(axis=1)
        else:
            raise MedtransError(None, f"unknown method {method!r}", "use 'kmeans' or 'gmm'")
        scores = {f"dice_class{k + 1}": dice(lp == k, lr == k) for k in range(n_classes)}
    present = [v for v in scores.values() if not np.isnan(v)]
    scores["dice_mean"] = float(np.mean(present)) if present else float("nan")
    return scores
