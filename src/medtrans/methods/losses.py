"""Training objectives shared by the methods: masked reconstruction, differentiable SSIM, GAN losses.

All of them compute in fp32 even under bf16 autocast: loss reductions over whole images lose digits in
bf16 and the values are logged and compared across runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medtrans.errors import MedtransError

GAN_LOSSES = ("lsgan", "vanilla")


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    """Reject an unknown option value with the allowed ones."""
    if value not in allowed:
        raise MedtransError(None, f"unknown {what} {value!r}", f"choose one of: {', '.join(allowed)}")
    return value


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` (B, C, *spatial) over voxels where ``mask`` (B, 1, *spatial) is non-zero.

    Channels share the mask. An all-empty mask gives 0 (no signal) rather than NaN.
    """
    values = values.float()
    if mask is None:
        return values.mean()
    weight = (mask > 0).to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def reconstruction(pred: Tensor, target: Tensor, kind: str = "l1", mask: Tensor | None = None) -> Tensor:
    """L1 or L2 distance, averaged over the voxels of ``mask`` (all voxels when ``None``)."""
    diff = pred.float() - target.float()
    return masked_mean(diff.abs() if kind == "l1" else diff.square(), mask)


def _gaussian_window(
    size: int, sigma: float, spatial_dims: int, channels: int, device: torch.device
) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    window = g
    for _ in range(spatial_dims - 1):
        window = window.unsqueeze(-1) * g
    return window.expand(channels, 1, *([size] * spatial_dims)).contiguous()


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float = 2.0,
    mask: Tensor | None = None,
    window: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Mean SSIM (Wang et al. 2004) of (B, C, *spatial) images, 2D or 3D, differentiable.

    Gaussian window (11, σ 1.5), K1 0.01, K2 0.03, population statistics, only windows that fit inside
    the image: equal to ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False)``. The window is truncated (odd, ≥ 3) for images smaller than it. With
    ``mask`` the SSIM map is averaged over the mask's voxels at the window centres.
    """
    spatial_dims = pred.dim() - 2
    window = min(window, *pred.shape[2:])
    window -= 1 - window % 2
    if window < 3:
        raise MedtransError(
            None, f"images of size {tuple(pred.shape[2:])} are too small for SSIM", "use ≥ 3 voxels"
        )
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    with torch.autocast(pred.device.type, enabled=False):
        x, y = pred.float(), target.float()
        channels = x.shape[1]
        kernel = _gaussian_window(window, sigma, spatial_dims, channels, x.device)
        # one grouped convolution filters the five moment images together
        stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
        moments = conv(stack, kernel.repeat(5, *([1] * (spatial_dims + 1))), groups=5 * channels)
        mx, my, mxx, myy, mxy = moments.split(channels, dim=1)
        vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        if mask is not None:
            crop = (window - 1) // 2
            mask = mask[(slice(None), slice(None), *(slice(crop, s - crop) for s in mask.shape[2:]))]
        return masked_mean(smap, mask)


def gan_loss(logits: Tensor, real: bool, kind: str = "lsgan") -> Tensor:
    """Discriminator-output loss towards "real" (1) or "fake" (0): least squares or binary cross-entropy."""
    logits = logits.float()
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


__all__ = ["GAN_LOSSES", "check_choice", "gan_loss", "masked_mean", "reconstruction", "ssim"]
