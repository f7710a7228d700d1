"""Spectral checks of a prediction: how much of its power sits at the 2-voxel period (checkerboards)."""

from __future__ import annotations

import torch
from torch import Tensor


def nyquist_fraction(x: Tensor) -> float:
    """Share of the non-DC spectral power of ``x`` (B, C, *spatial) at the Nyquist frequency of any axis.

    A stride-2 transposed convolution paints a pattern of period 2 voxels (a checkerboard), whose power
    lands exactly on the frequencies with index n/2 along an axis. Natural images (and the phantom) have
    little there, so the ratio of a prediction's fraction to its target's measures the artifact.
    Averaged over images and channels; axes of odd length have no Nyquist frequency and are skipped.
    """
    x = x.detach().double()
    spatial = tuple(range(2, x.dim()))
    x = x - x.mean(dim=spatial, keepdim=True)
    power = torch.fft.fftn(x, dim=spatial).abs().square()
    on_nyquist = torch.zeros(x.shape[2:], dtype=torch.bool, device=x.device)
    for axis, n in enumerate(x.shape[2:]):
        if n % 2 == 0:
            index = [slice(None)] * len(spatial)
            index[axis] = n // 2
            on_nyquist[tuple(index)] = True
    total = power.sum(dim=spatial).clamp_min(1e-300)
    return (power[..., on_nyquist].sum(-1) / total).mean().item()
