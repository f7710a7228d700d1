"""Voxel-wise metrics: MAE, MSE, RMSE, NMSE, PSNR, NCC — numpy or torch in, Python float out.

Every function takes ``(pred, ref)`` (the order scikit-image's ``(image_true, image_test)`` reverses),
an optional ``mask`` (voxels ``> 0`` are scored, all others ignored: values outside the mask never
change the result) and, where a peak is needed, an explicit ``data_range``. Computed in float64 on the
reference's device.
"""

from __future__ import annotations

import math

import torch

from medtrans.metrics._common import ArrayLike, check_data_range, check_mask, check_pair, reference_range


def _masked(pred: ArrayLike, ref: ArrayLike, mask: ArrayLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored voxels of both images as 1D float64 tensors."""
    p, r = check_pair(pred, ref)
    m = check_mask(mask, tuple(p.shape), p.device)
    return (p.flatten(), r.flatten()) if m is None else (p[m], r[m])


def mae(pred: ArrayLike, ref: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Mean absolute error ``mean |pred - ref|`` over the mask (SynthRAD: ``sum|gt m - pred m| / sum m``)."""
    p, r = _masked(pred, ref, mask)
    return float((p - r).abs().mean())


def mse(pred: ArrayLike, ref: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Mean squared error ``mean (pred - ref)^2`` over the mask."""
    p, r = _masked(pred, ref, mask)
    return float(((p - r) ** 2).mean())


def rmse(pred: ArrayLike, ref: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Root mean squared error ``sqrt(MSE)``, in the images' units."""
    return math.sqrt(mse(pred, ref, mask=mask))


def nmse(pred: ArrayLike, ref: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Normalised MSE ``sum (pred - ref)^2 / sum ref^2`` over the mask (NaN if the reference is all zero)."""
    p, r = _masked(pred, ref, mask)
    den = float((r * r).sum())
    return float(((p - r) ** 2).sum()) / den if den > 0 else float("nan")


def psnr(
    pred: ArrayLike, ref: ArrayLike, *, data_range: float | None = None, mask: ArrayLike | None = None
) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB over the mask.

    ``data_range``: default max - min of the *whole* reference (scikit-image instead guesses from the
    dtype, e.g. 1 or 2 for floats; the SynthRAD code uses the reference's max - min). Identical images
    give ``inf`` (MSE = 0), returned explicitly rather than as a division warning.
    """
    p, r = check_pair(pred, ref)
    dr = check_data_range(reference_range(r) if data_range is None else data_range)
    m = check_mask(mask, tuple(p.shape), p.device)
    if m is not None:
        p, r = p[m], r[m]
    err = float(((p - r) ** 2).mean())
    return math.inf if err == 0 else 10.0 * math.log10(dr * dr / err)


def ncc(pred: ArrayLike, ref: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Pearson correlation of the masked voxels (NaN when either image is constant there)."""
    p, r = _masked(pred, ref, mask)
    pc, rc = p - p.mean(), r - r.mean()
    den = math.sqrt(float((pc * pc).sum()) * float((rc * rc).sum()))
    return float((pc * rc).sum()) / den if den > 0 else float("nan")
