"""Is an uncertainty map worth looking at? Calibration of a per-voxel std against the actual error.

Three numbers inside the mask, each answering one question a reader of a std map asks:

- ``std_spearman``: does the std rank voxels by how wrong they are? (Spearman ρ of std and |error|;
  1 is a perfect ranking, 0 is no information.)
- ``std_ause``: the area under the sparsification-error curve (Ilg et al. 2018): remove the voxels
  the map is least sure of, in steps of 5 %, and watch the RMSE of what is left; subtract the same
  curve for the oracle that removes the largest errors first. Both curves are divided by the RMSE of
  all voxels, so 0 is an oracle ranking and larger is worse, comparable across units.
- ``std_ratio``: RMSE / RMS(std). 1 means the std has the size of the error; > 1 means the map
  under-states it (the usual case for samplers: report a scale factor fitted on validation).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

#: fractions of voxels removed along the sparsification curve
FRACTIONS = np.arange(0.0, 1.0, 0.05)


def _sparsification(errors_sorted: np.ndarray) -> np.ndarray:
    """RMSE of what is left after removing each fraction from the front of ``errors_sorted``."""
    squares = errors_sorted.astype(np.float64) ** 2
    tail = np.cumsum(squares[::-1])[::-1]  # sum of squares from index i to the end
    n = len(squares)
    starts = np.minimum((FRACTIONS * n).astype(int), n - 1)
    return np.sqrt(tail[starts] / (n - starts))


def calibration(pred: np.ndarray, ref: np.ndarray, std: np.ndarray,
                mask: np.ndarray | None = None) -> dict[str, float]:
    """``std_spearman``, ``std_ause`` and ``std_ratio`` of a std map for ``pred`` against ``ref``."""
    keep = np.ones(ref.shape, bool) if mask is None else np.asarray(mask) > 0
    error = np.abs(np.asarray(pred, np.float64) - np.asarray(ref, np.float64))[keep]
    sigma = np.asarray(std, np.float64)[keep]
    if error.size < 2:
        return {"std_spearman": float("nan"), "std_ause": float("nan"), "std_ratio": float("nan")}
    rmse = float(np.sqrt(np.mean(error**2)))
    rho = float(spearmanr(sigma, error).statistic) if np.ptp(sigma) > 0 and np.ptp(error) > 0 else 0.0
    by_std = error[np.argsort(-sigma, kind="stable")]
    oracle = np.sort(error)[::-1]
    scale = max(rmse, 1e-12)
    gap = (_sparsification(by_std) - _sparsification(oracle)) / scale
    ause = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(FRACTIONS)))
    rms_std = float(np.sqrt(np.mean(sigma**2)))
    ratio = rmse / rms_std if rms_std > 0 else float("inf")
    return {"std_spearman": rho, "std_ause": ause, "std_ratio": ratio}
