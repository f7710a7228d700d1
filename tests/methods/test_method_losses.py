"""Loss functions: SSIM against scikit-image, masked means analytically, GAN losses at known points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from medtrans.methods.losses import gan_loss, masked_mean, reconstruction, ssim


@pytest.mark.parametrize("shape", [(40, 37), (20, 21, 19)])
def test_ssim_equals_scikit_image(shape):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, shape)
    b = np.clip(a + rng.normal(0, 0.3, shape), -1, 1)
    expected = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0
    )
    got = ssim(torch.tensor(b)[None, None], torch.tensor(a)[None, None], data_range=2.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_masked_ssim_averages_the_scikit_image_map_over_the_mask():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (32, 32))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    mask = np.zeros(a.shape, bool)
    mask[8:20, 10:30] = True
    _, smap = structural_similarity(
        b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0, full=True
    )
    inner = np.zeros_like(mask)
    inner[5:-5, 5:-5] = True  # skimage's map is only exact where the 11-wide window fits
    expected = smap[mask & inner].mean()
    t = lambda v: torch.tensor(v)[None, None]  # noqa: E731
    assert ssim(t(b), t(a), 2.0, mask=t(mask.astype(np.float32))).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_is_one_for_identical_images_and_differentiable():
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    assert ssim(x, x.detach()).item() == pytest.approx(1.0, abs=1e-6)
    y = torch.randn(2, 1, 16, 16)
    (1 - ssim(x, y)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_masked_mean_counts_only_masked_voxels_of_every_channel():
    values = torch.arange(8.0).reshape(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert masked_mean(values, mask).item() == pytest.approx((0 + 3 + 4 + 7) / 4)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0
    assert masked_mean(values, None).item() == pytest.approx(3.5)


def test_reconstruction_l1_and_l2():
    pred, target = torch.tensor([[[1.0, -2.0]]]), torch.tensor([[[0.0, 0.0]]])
    assert reconstruction(pred, target, "l1").item() == pytest.approx(1.5)
    assert reconstruction(pred, target, "l2").item() == pytest.approx(2.5)


def test_gan_losses_at_known_points():
    zeros = torch.zeros(2, 1, 3, 3)
    assert gan_loss(zeros, True, "lsgan").item() == pytest.approx(1.0)
    assert gan_loss(zeros + 1, True, "lsgan").item() == pytest.approx(0.0)
    assert gan_loss(zeros, False, "vanilla").item() == pytest.approx(math.log(2))
    assert gan_loss(zeros + 20, True, "vanilla").item() < 1e-8
