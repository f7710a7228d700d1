"""Summaries of per-subject metric values and paired tests between two models.

The unit of analysis is the subject (never the slice): slices of one subject are not independent, so
per-slice statistics would overstate certainty. Non-finite values (PSNR = inf for a perfect
prediction, NCC = NaN for a constant image) are counted and left out of the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import wilcoxon

from medtrans.errors import MedtransError


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (resampling subjects, seeded)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def summarise(values: Sequence[float], *, seed: int = 0, n_boot: int = 10000) -> dict[str, object]:
    """mean, std (sample, ddof=1), median, IQR (q75 - q25), 95% bootstrap CI of the mean, counts."""
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    n = int(finite.size)
    out: dict[str, object] = {
        "n": n,
        "n_nan": int(np.isnan(x).sum()),
        "n_inf": int(np.isinf(x).sum()),
        "mean": float(finite.mean()) if n else None,
        "std": float(finite.std(ddof=1)) if n > 1 else None,
        "median": float(np.median(finite)) if n else None,
        "iqr": float(np.subtract(*np.percentile(finite, [75, 25]))) if n else None,
        "ci95": list(bootstrap_ci(finite, n_boot=n_boot, seed=seed)) if n else None,
    }
    return out


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, object]:
    """Two-sided Wilcoxon signed-rank test on paired per-subject values (scipy.stats.wilcoxon).

    Pairs with a non-finite value on either side are dropped. All differences zero -> p = 1.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise MedtransError(
            None, f"paired test needs equal lengths, got {x.size} and {y.size}", "compare the same subjects"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    diff = x - y
    result: dict[str, object] = {
        "n_pairs": int(x.size),
        "median_difference": float(np.median(diff)) if x.size else None,
    }
    if x.size == 0:
        result["p_value"] = None
    elif not np.any(diff != 0):
        result["p_value"] = 1.0
    else:
        result["p_value"] = float(wilcoxon(x, y, alternative="two-sided").pvalue)
    return result


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone), for comparing several models with one.

    ``None`` (no test possible) stays ``None`` and does not count towards the number of tests.
    """
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
