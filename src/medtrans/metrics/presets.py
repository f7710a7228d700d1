"""Named evaluation conventions, each reproducing one published recipe step by step.

Numbers from different papers are comparable only under the same recipe (clipping, masking, data
range, border crop, per-slice or per-volume averaging). ``evaluate_pair(pred, ref, mask, preset)``
applies one recipe to one subject; ``PRESETS[name].conventions`` says in words what was done, and the
evaluator writes those words into its outputs. docs/METRICS.md gives the formulas and when to use each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from medtrans.errors import MedtransError
from medtrans.metrics import functional as fm
from medtrans.metrics._common import ArrayLike, check_mask, check_pair
from medtrans.metrics.structural import ms_ssim, ssim

HU_AIR = -1024.0


@dataclass(frozen=True)
class Preset:
    """A recipe: what it computes (``fn``), for which data (``expects``), and how, in words."""

    name: str
    summary: str
    expects: str
    conventions: dict[str, str]
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], dict[str, float]] = field(repr=False)
    fid_window: tuple[float, float] | None = None  # intensities scaled to the FID extractor's input
    # metrics the original pools over the slices of all subjects: the evaluator adds their mean
    # weighted by the per-subject ``slices`` count
    pooled: tuple[str, ...] = ()


def _default(p: torch.Tensor, r: torch.Tensor, m: torch.Tensor | None) -> dict[str, float]:
    dr = float(r.max() - r.min())
    return {
        "mae": fm.mae(p, r, mask=m),
        "rmse": fm.rmse(p, r, mask=m),
        "nmse": fm.nmse(p, r, mask=m),
        "ncc": fm.ncc(p, r, mask=m),
        "psnr": fm.psnr(p, r, data_range=dr, mask=m),
        "ssim": ssim(
            p, r, data_range=dr, mask=m, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        ),
    }


def _check_hu(r: torch.Tensor, preset: str) -> None:
    """CT presets assume Hounsfield units: a reference spanning < 100 units is normalised data, not HU."""
    lo, hi = float(r.min()), float(r.max())
    if hi - lo < 100 or lo < -5000 or hi > 20000:
        raise MedtransError(
            None,
            f"preset {preset!r} expects CT in HU, but the reference spans [{lo:g}, {hi:g}]",
            "evaluate CT in Hounsfield units (inverse-normalise first) or use preset 'default'",
        )


def _synthrad2023(
    p: torch.Tensor, r: torch.Tensor, m: torch.Tensor | None, hi: float = 3000.0
) -> dict[str, float]:
    _check_hu(r, "synthrad2023")
    mask = torch.ones_like(r, dtype=torch.bool) if m is None else m
    dr = hi - HU_AIR
    pc, rc = p.clamp(HU_AIR, hi), r.clamp(HU_AIR, hi)
    ps, rs = (torch.where(mask, t, HU_AIR) - HU_AIR for t in (pc, rc))
    return {
        "mae": fm.mae(p, r, mask=mask),
        "psnr": fm.psnr(pc, rc, data_range=dr, mask=mask),
        "ssim": ssim(ps, rs, data_range=dr, mask=mask),
    }


def _synthrad2025(
    p: torch.Tensor, r: torch.Tensor, m: torch.Tensor | None, hi: float = 3000.0
) -> dict[str, float]:
    _check_hu(r, "synthrad2025")
    mask = torch.ones_like(r, dtype=torch.bool) if m is None else m
    dr = hi - HU_AIR
    pm, rm = (torch.where(mask, t, HU_AIR) for t in (p, r))
    pc, rc = pm.clamp(HU_AIR, hi), rm.clamp(HU_AIR, hi)
    return {
        "mae": fm.mae(pm, rm, mask=mask),
        "psnr": fm.psnr(pc, rc, data_range=dr, mask=mask),
        # as the official code executes: luminance at every scale with that scale's weight
        "ms_ssim": ms_ssim(
            pc - HU_AIR, rc - HU_AIR, data_range=dr, mask=mask, luminance="all", pad_small=True
        ),
    }


def _synthrad2025_container(p: torch.Tensor, r: torch.Tensor, m: torch.Tensor | None) -> dict[str, float]:
    return _synthrad2025(p, r, m, hi=3071.0)


def _unit_scale(t: torch.Tensor, name: str, preset: str) -> torch.Tensor:
    """icon-lab's input step: [0, 1] data unchanged; [-1, 1] data (minimum < -0.1) mapped to [0, 1] and
    only then clipped, as SynDiff's and SelfRDB's code do."""
    lo, hi = float(t.min()), float(t.max())
    if lo < -1.05 or hi > 1.05:
        raise MedtransError(
            None,
            f"preset {preset!r} expects images scaled to [0, 1] (or [-1, 1]); the {name} "
            f"spans [{lo:g}, {hi:g}]",
            "scale each volume to [0, 1] as SynDiff/SelfRDB do",
        )
    return ((t + 1) / 2).clamp(0, 1) if lo < -0.1 else t


def _icon_slices(
    p: torch.Tensor, r: torch.Tensor, m: torch.Tensor | None, preset: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images scaled, masked, as (Z, X, Y) stacks of axial slices (the last voxel axis)."""
    p, r = _unit_scale(p, "prediction", preset), _unit_scale(r, "reference", preset)
    if m is not None:
        p, r = p * m, r * m
    return p.movedim(-1, 0), r.movedim(-1, 0)


def _kept(keep: torch.Tensor, preset: str) -> None:
    if not bool(keep.any()):
        raise MedtransError(
            None, f"preset {preset!r}: every slice is zero inside the mask (in the prediction or the "
            "reference)", "check the mask and the images"
        )


def _icon(p: torch.Tensor, r: torch.Tensor, m: torch.Tensor | None) -> dict[str, float]:
    p, r = _icon_slices(p, r, m, "icon")
    p, r = p.abs(), r.abs()
    # |x| / slice mean (over all pixels); a slice whose mean is zero in either image is NaN in the
    # original (0 / 0) and dropped by its nanmean: skipped here
    pmean, rmean = p.mean(dim=(1, 2)), r.mean(dim=(1, 2))
    keep = (pmean > 0) & (rmean > 0)
    _kept(keep, "icon")
    p = p[keep] / pmean[keep, None, None]
    r = r[keep] / rmean[keep, None, None]
    peak = r.amax(dim=(1, 2))
    err = ((p - r) ** 2).mean(dim=(1, 2))
    psnr_slices = torch.where(err > 0, 10 * torch.log10(peak**2 / err), torch.full_like(err, np.inf))
    # SSIM is invariant to scaling both images and the data range alike: divide each slice by its peak
    # so one batched call with data_range=1 equals per-slice calls with data_range=gt.max()
    scale = peak[:, None, None]
    ssim_slices = ssim(p / scale, r / scale, data_range=1.0, batch=True)
    return {"psnr": float(psnr_slices.mean()), "ssim_pct": float(np.mean(ssim_slices) * 100.0)}


def _syndiff(p: torch.Tensor, r: torch.Tensor, m: torch.Tensor | None) -> dict[str, float]:
    p, r = _icon_slices(p, r, m, "syndiff")
    pmax, rmax = p.amax(dim=(1, 2)), r.amax(dim=(1, 2))
    keep = (pmax > 0) & (rmax > 0)  # 0 / 0 in the original: NaN, which would poison its pooled mean
    _kept(keep, "syndiff")
    p = p[keep] / pmax[keep, None, None]
    r = r[keep] / rmax[keep, None, None]
    peak = p.amax(dim=(1, 2))  # the prediction's maximum is SynDiff's data range
    err = ((p - r) ** 2).mean(dim=(1, 2))
    psnr_slices = torch.where(err > 0, 10 * torch.log10(peak**2 / err), torch.full_like(err, np.inf))
    return {"psnr": float(psnr_slices.mean()), "slices": float(keep.sum())}


_HU = "CT in Hounsfield units"
_ICON_SCALING = ("[0, 1] data unchanged (no clipping); an image with minimum < -0.1 is mapped from [-1, 1] "
                 "to [0, 1] and then clipped to [0, 1]")


def _synthrad2025_conventions(hi: int) -> dict[str, str]:
    dr = hi + 1024
    return {
        "mask": "binarised > 0; outside-mask voxels set to -1024 in both images first",
        "mae": "sum |gt*m - pred*m| / sum m, no clipping",
        "psnr": f"clip both to [-1024, {hi}] HU, keep mask voxels, data_range {dr}",
        "ms_ssim": f"clip to [-1024, {hi}], shift +1024, edge-pad each axis to >= 97 voxels; 5 scales "
        "weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); per scale map L^w C^w S^w, luminance with the "
        "scale's weight at every scale as the official code executes (terms clipped at 0, C3 = C2/2, "
        f"uniform 7^3 window, sample covariance, data_range {dr}) averaged inside the mask after a 3-voxel "
        "crop; between scales 2x2x2 mean (zero before index 0) and subsampling by 2, mask subsampled; "
        "product of the per-scale values clipped to [0, 1]",
    }
PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        "All voxel metrics in the images' own units, 3D Wang SSIM; any modality.",
        "any units",
        {
            "mask": "voxels > 0 are scored; without a mask every voxel",
            "mae/rmse/nmse/ncc": "over masked voxels, no clipping; nmse = sum (p-r)^2 / sum r^2; "
            "ncc = Pearson",
            "psnr": "10 log10(L^2 / MSE) over masked voxels, L = max - min of the whole reference",
            "ssim": "per volume (2D if a singleton axis), Gaussian window sigma 1.5 (11 taps), population "
            "covariance (Wang et al.), K1 0.01, K2 0.03, L as psnr; mean of the map inside the mask "
            "within the valid interior (5 voxels cropped from each border)",
        },
        _default,
    ),
    "synthrad2023": Preset(
        "synthrad2023",
        "SynthRAD2023 official image metrics (MAE, PSNR, masked SSIM) for sCT in HU.",
        _HU,
        {
            "mask": "binarised > 0; without a mask every voxel",
            "mae": "sum |gt*m - pred*m| / sum m, no clipping",
            "psnr": "clip both to [-1024, 3000] HU, keep mask voxels, data_range 4024",
            "ssim": "clip to [-1024, 3000], outside mask -> -1024, shift +1024, 3D scikit-image SSIM "
            "(uniform "
            "7^3 window, sample covariance, data_range 4024), mean of the map inside the mask after "
            "cropping 3 voxels from each border",
        },
        _synthrad2023,
        fid_window=(-1024.0, 3000.0),
    ),
    "synthrad2025": Preset(
        "synthrad2025",
        "SynthRAD2025 official image metrics (MAE, PSNR, masked MS-SSIM) for sCT in HU, metrics repository "
        "range [-1024, 3000].",
        _HU,
        _synthrad2025_conventions(3000),
        _synthrad2025,
        fid_window=(-1024.0, 3000.0),
    ),
    "synthrad2025_container": Preset(
        "synthrad2025_container",
        "SynthRAD2025 image metrics with the evaluation container's range [-1024, 3071] HU (the "
        "leaderboard's numbers).",
        _HU,
        _synthrad2025_conventions(3071),
        _synthrad2025_container,
        fid_window=(-1024.0, 3071.0),
    ),
    "icon": Preset(
        "icon",
        "icon-lab (SelfRDB compute_metrics) per-slice PSNR / SSIM x100 on mean-normalised slices.",
        "images scaled to [0, 1] (or [-1, 1])",
        {
            "scaling": _ICON_SCALING,
            "mask": "images multiplied by the binarised mask",
            "slices": "axial = last voxel axis; each slice |x| / mean(|x|) over all its pixels; a slice "
            "whose mean is zero in the prediction or the reference is skipped (NaN in the original, "
            "dropped by nanmean)",
            "psnr": "per slice, data_range = max of the normalised reference slice; mean over slices",
            "ssim_pct": "per slice scikit-image defaults (uniform 7x7, sample covariance), "
            "data_range = max of the normalised reference slice, x100; mean over slices",
        },
        _icon,
        fid_window=(0.0, 1.0),
    ),
    "syndiff": Preset(
        "syndiff",
        "SynDiff's test script: per-slice PSNR on max-normalised slices, pooled over all slices.",
        "images scaled to [0, 1] (or [-1, 1])",
        {
            "scaling": _ICON_SCALING,
            "mask": "without --mask none (as the original); with a mask both images are multiplied by it",
            "slices": "axial = last voxel axis; each slice divided by its own maximum; a slice whose maximum "
            "is zero in either image is skipped (0/0 in the original); 'slices' = slices scored",
            "psnr": "per slice, data_range = max of the normalised prediction slice; no SSIM",
            "pooling": "the original averages all slices of all subjects: summary.json 'pooled_over_slices' "
            "is that slice-weighted mean; 'metrics' holds the mean of per-subject means",
        },
        _syndiff,
        fid_window=(0.0, 1.0),
        pooled=("psnr",),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MedtransError(None, f"unknown metric preset {name!r}", f"choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def evaluate_pair(
    pred: ArrayLike,
    ref: ArrayLike,
    mask: ArrayLike | None = None,
    preset: str = "default",
) -> dict[str, float]:
    """All metrics of ``preset`` for one subject: ``pred`` (synthetic) against ``ref`` (real), same grid."""
    spec = get_preset(preset)
    p, r = check_pair(pred, ref)
    m = check_mask(mask, tuple(r.shape), r.device)
    return spec.fn(p, r, m)
