"""Checkerboard artifacts: transposed-conv decoders put power at the 2-voxel period, resize decoders not.

The measure is ``metrics.spectral.nyquist_fraction``: the share of an image's spectral power at the
Nyquist frequency. A net whose output has many times the target's share paints a checkerboard.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_nets import tiny

from medtrans.metrics.spectral import nyquist_fraction
from medtrans.nets import blocks
from medtrans.registry import BACKBONES

UPSAMPLING = [n for n in BACKBONES.shipped() if "upsample" in inspect.signature(BACKBONES.get(n)).parameters]


def smooth_images(batch: int, spatial_dims: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random low-frequency images: a coarse random grid upsampled linearly (~1% Nyquist power)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 4, *[4] * spatial_dims, generator=g, dtype=torch.float64)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=[size] * spatial_dims, mode=mode, align_corners=True)


def blobs(batch: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) pairs of smooth discs, target = 1 − source + a ramp (a contrast inversion)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = torch.rand(batch, 2, 1, 1, generator=g) - 0.5
    radius = torch.rand(batch, 1, 1, 1, generator=g) * 0.3 + 0.3
    d = ((yy - centre[:, :1]) ** 2 + (xx - centre[:, 1:]) ** 2).sqrt()
    source = torch.sigmoid((radius - d) * 10) + 0.3 * torch.sigmoid((0.15 - d) * 10)
    return source, 1 - source + 0.2 * yy


def test_nyquist_fraction_of_a_checkerboard_is_one_and_of_smooth_images_small():
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = ((i + j) % 2).double()[None, None]
    assert nyquist_fraction(board) == pytest.approx(1.0)
    # stripes of period 2 plus an equally strong cosine of period 8: half the power each
    stripes = 2 * (i % 2).double() - 1 + torch.cos(j / 8 * 2 * torch.pi) * 2**0.5
    assert nyquist_fraction(stripes[None, None]) == pytest.approx(0.5)
    assert nyquist_fraction(blobs(4)[1]) < 1e-3
    assert nyquist_fraction(torch.ones(1, 1, 7, 9)) == 0  # no Nyquist frequency on odd axes, no power


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resize_upsampling_puts_almost_no_power_at_the_two_voxel_period(spatial_dims):
    """Nearest 2× repeats voxels (zero Nyquist power) and a shift-invariant conv keeps it (up to the
    zero-padded border); a random stride-2 transposed conv gives each voxel of a 2×2 cell its own taps."""
    x = smooth_images(2, spatial_dims, size=8)
    torch.manual_seed(0)
    resize = blocks.upsampler(spatial_dims, 4, 4, "resize").double()
    transpose = blocks.upsampler(spatial_dims, 4, 4, "transpose").double()
    assert nyquist_fraction(resize(x)) < 0.03
    assert nyquist_fraction(transpose(x)) > 0.2


@pytest.mark.parametrize("name", UPSAMPLING)
def test_untrained_transposed_decoders_paint_a_checkerboard_that_resize_avoids(name):
    x = smooth_images(4, 2, size=32).float()[:, :2]
    fractions = {}
    for mode in ("transpose", "resize"):
        net = tiny(name, time_dim=0, upsample=mode).eval()
        with torch.no_grad():
            fractions[mode] = nyquist_fraction(net(x))
    assert fractions["resize"] < 0.03 and fractions["transpose"] > 3 * fractions["resize"], fractions


@pytest.mark.parametrize("name", ["unet", "resnet"])
@pytest.mark.parametrize("mode", ["transpose", "resize"])
def test_briefly_trained_output_has_no_more_checkerboard_than_its_target(name, mode):
    """The user's check: after 30 steps on smooth pairs, power at the 2-pixel period against the target's.

    With resize the output has at most 2.5× the target's share; transposed convs still paint a
    checkerboard at this point (3–20× in measurements), which this check flags.
    """
    source, target = blobs(8)
    torch.manual_seed(0)
    net = tiny(name, in_ch=1, out_ch=1, time_dim=0, upsample=mode)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        loss = (net(source) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ratio = nyquist_fraction(net(source)) / nyquist_fraction(target)
    assert (ratio < 2.5) == (mode == "resize"), ratio
