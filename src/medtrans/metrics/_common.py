"""Input checks shared by every metric: one place that turns arrays into float64 tensors and says no.

Metrics accept numpy arrays or torch tensors. A tensor stays on its device (so a CUDA tensor is
evaluated on the GPU); numpy goes to a CPU tensor without a copy where possible. Arithmetic is float64
so results agree with the numpy/scikit-image references to ~1e-12, not ~1e-6 as float32 would.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medtrans.errors import MedtransError

ArrayLike = np.ndarray | torch.Tensor


def _native(a) -> np.ndarray:
    """A numpy array torch can wrap: native byte order (NIfTI data may be big-endian) and writeable
    (memory-mapped images are read-only); copied only when needed."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise MedtransError(None, f"unsupported array dtype {arr.dtype}", "pass a real-valued image")
    if not arr.dtype.isnative or not arr.flags.writeable:
        arr = np.array(arr, dtype=arr.dtype.newbyteorder("="))
    return arr


def as_float64(a: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    """Float64 tensor view of ``a`` (on ``device`` if given, else where it already lives)."""
    t = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(_native(a))
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if not (
        t.is_floating_point() or t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise MedtransError(None, f"{name} has unsupported dtype {t.dtype}", "pass a real-valued array")
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


def check_pair(pred: ArrayLike, ref: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 tensors on the reference's device; same shape, all finite."""
    r = as_float64(ref, "reference")
    p = as_float64(pred, "prediction", r.device)
    if tuple(p.shape) != tuple(r.shape):
        raise MedtransError(
            None,
            f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(r.shape)}",
            "resample the prediction onto the reference grid (medtrans evaluate --resample)",
        )
    if r.numel() == 0:
        raise MedtransError(None, "images are empty", "pass non-empty images")
    for t, name in ((p, "prediction"), (r, "reference")):
        # a finite sum means every value is finite (float64 overflow needs values near 1e300): one cheap
        # pass instead of isfinite's three
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise MedtransError(
                None, f"{name} contains NaN or infinite values", "fix or fill them before computing metrics"
            )
    return p, r


def check_mask(mask: ArrayLike | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """Boolean mask (``mask > 0``, the SynthRAD binarisation) of the image's shape; refuses empty masks."""
    if mask is None:
        return None
    m = mask.detach() if isinstance(mask, torch.Tensor) else torch.from_numpy(_native(mask))
    if tuple(m.shape) != tuple(shape):
        raise MedtransError(
            None,
            f"mask shape {tuple(m.shape)} differs from image shape {tuple(shape)}",
            "pass a mask on the image grid",
        )
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise MedtransError(None, "mask contains NaN or infinite values", "pass a binary mask")
    m = (m if m.dtype == torch.bool else m > 0).to(device)
    if int(m.view(torch.uint8).amax()) == 0:  # faster than any() on large boolean masks
        raise MedtransError(
            None, "mask is empty (no voxel > 0)", "pass a mask that covers the region to score"
        )
    return m


def check_data_range(data_range: float) -> float:
    """A data range must be a finite positive number: it sets PSNR's peak and SSIM's constants."""
    value = float(data_range)
    if not math.isfinite(value) or value <= 0:
        raise MedtransError(
            None,
            f"data_range must be finite and > 0, got {data_range!r}",
            "pass the intensity range of the reference (e.g. 4024 for CT in [-1024, 3000] HU)",
        )
    return value


def reference_range(ref: torch.Tensor) -> float:
    """Default data range: max - min of the whole reference image (not the dtype's range)."""
    value = float(ref.max() - ref.min())
    if value <= 0:
        raise MedtransError(
            None, "reference image is constant, so its data range is 0", "pass data_range explicitly"
        )
    return value
