"""Whole-volume inference on plain tensors: slicing, 2.5D stacks, sliding window, TTA, sample moments."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from medtrans.engine.inferers import (
    Sampling,
    SliceInferer,
    WindowInferer,
    context_stack,
    method_moments,
)
from medtrans.methods.base import Method
from medtrans.methods.schedules import Noise


def affine_net(x: torch.Tensor) -> torch.Tensor:
    """Pointwise: 2·(channel 0) + 1, so every voxel's expected output is known."""
    return 2 * x[:, :1] + 1


class NetMethod(Method):
    """A one-pass method around a fixed function (the inferer, not the method, is under test)."""

    def __init__(self, fn, stochastic_sigma: float = 0.0) -> None:
        super().__init__(2, 1)
        self.fn = fn
        self.sigma = stochastic_sigma
        self.stochastic = stochastic_sigma > 0

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        return iter(())

    def losses(self, batch, group, step=0):
        return {}

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        out = self.fn(source)
        if self.sigma > 0:
            out = out + self.sigma * noise.randn_like(out)
        return out


def run_slices(fn, array, slice_axis, batch_size=4, context=0, tta=False):
    moments = method_moments(NetMethod(fn), Sampling(tta=tta), torch.device("cpu"), flip_axes=(2, 3))
    return SliceInferer(slice_axis, batch_size, context)(moments, array, 0, with_std=False)[0]


def run_window(fn, array, patch_size, batch_size, slice_axis=2, tta=False):
    inferer = WindowInferer(patch_size, batch_size, slice_axis)
    moments = method_moments(NetMethod(fn), Sampling(tta=tta), torch.device("cpu"),
                             flip_axes=inferer.flip_axes)
    return inferer(moments, array, 0, with_std=False)[0]


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slices_cover_the_volume_whatever_axis_and_size(slice_axis: int) -> None:
    rng = np.random.default_rng(0)
    array = torch.from_numpy(rng.normal(size=(2, 13, 37, 9)).astype(np.float32))
    seen: list[tuple[int, ...]] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return affine_net(x)

    out = run_slices(net, array, slice_axis, batch_size=4)
    np.testing.assert_allclose(out.numpy(), 2 * array[0].numpy() + 1, rtol=1e-6)
    n_slices = array.shape[1 + slice_axis]
    assert sum(s[0] for s in seen) == n_slices and max(s[0] for s in seen) == 4
    # in-plane sizes reach the network padded to multiples of 32 (U-Net depth 5 fits)
    assert all(s[1] == 2 and s[2] % 32 == 0 and s[3] % 32 == 0 for s in seen)


def test_context_stack_replicates_the_ends() -> None:
    array = torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).reshape(2, 5, 3, 4)
    index = torch.tensor([0, 2, 4])
    got = context_stack(array, index, context=1).numpy()
    assert got.shape == (3, 6, 3, 4)
    a = array.numpy()
    for b, s in enumerate(index.tolist()):
        neighbours = np.clip([s - 1, s, s + 1], 0, 4)
        expected = np.concatenate([a[c, neighbours] for c in range(2)])  # modality-major
        np.testing.assert_array_equal(got[b], expected)


def test_two_and_a_half_d_feeds_the_centre_slice_in_the_middle() -> None:
    rng = np.random.default_rng(1)
    array = torch.from_numpy(rng.normal(size=(1, 8, 6, 7)).astype(np.float32))
    out = run_slices(lambda x: x[:, 2:3], array, slice_axis=2, batch_size=3, context=2)
    np.testing.assert_array_equal(out.numpy(), array[0].numpy())


def test_sliding_window_blends_patches_back_to_the_volume() -> None:
    rng = np.random.default_rng(2)
    array = torch.from_numpy(rng.normal(size=(1, 20, 17, 11)).astype(np.float32))
    calls: list[tuple[int, ...]] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return affine_net(x)

    out = run_window(net, array, patch_size=(8, 8, 8), batch_size=2)
    assert out.shape == (20, 17, 11)
    np.testing.assert_allclose(out.numpy(), 2 * array[0].numpy() + 1, rtol=1e-5, atol=1e-5)
    assert all(c[2:] == (8, 8, 8) for c in calls) and len(calls) > 1


def test_sliding_window_pads_a_volume_smaller_than_the_patch() -> None:
    array = torch.linspace(-1, 1, 5 * 6 * 4).reshape(1, 5, 6, 4)
    out = run_window(affine_net, array, patch_size=(8, 8, 8), batch_size=1)
    np.testing.assert_allclose(out.numpy(), 2 * array[0].numpy() + 1, rtol=1e-5, atol=1e-5)


def test_flip_tta_averages_flips_and_undoes_them() -> None:
    width = 10
    ramp = torch.arange(width, dtype=torch.float32)

    def net(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant: weights depend on the column
        return x * ramp

    x = torch.rand(2, 1, 6, width)
    noise = Noise.seeded([0, 1])
    tta = Sampling(tta=True)
    mean, second = method_moments(NetMethod(net), tta, torch.device("cpu"), flip_axes=(2, 3))(x, noise)
    # flips along H leave the ramp alone; flips along W average it with its mirror
    np.testing.assert_allclose(mean.numpy(), (x * (ramp + ramp.flip(0)) / 2).numpy(), rtol=1e-6)
    # the second moment averages the squares: its spread is the flips' disagreement
    expect_second = (x**2 * (ramp**2 + ramp.flip(0) ** 2) / 2).numpy()
    np.testing.assert_allclose(second.numpy(), expect_second, rtol=1e-5)
    # an equivariant net is unchanged by TTA
    same, _ = method_moments(NetMethod(affine_net), tta, torch.device("cpu"), flip_axes=(2, 3))(x, noise)
    np.testing.assert_allclose(same.numpy(), affine_net(x).numpy(), rtol=1e-6)


def test_tta_in_slices_and_windows_keeps_shape() -> None:
    array = torch.rand(1, 9, 10, 7)
    slices = run_slices(affine_net, array, slice_axis=1, batch_size=4, tta=True)
    window = run_window(affine_net, array, patch_size=(8, 8, 8), batch_size=2, slice_axis=1, tta=True)
    for out in (slices, window):
        np.testing.assert_allclose(out.numpy(), 2 * array[0].numpy() + 1, rtol=1e-5, atol=1e-5)


def _stochastic(sigma: float, samples: int) -> tuple[NetMethod, Sampling]:
    return NetMethod(affine_net, stochastic_sigma=sigma), Sampling(samples=samples, seed=3)


@pytest.mark.parametrize("kind", ["slices", "window"])
def test_std_blends_without_seams_and_matches_the_known_spread(kind: str) -> None:
    """Samples of constant std 0.3 give a std map of 0.3 everywhere, across window and batch seams."""
    torch.manual_seed(0)
    method, sampling = _stochastic(0.3, samples=64)
    array = torch.rand(1, 24, 20, 12)
    moments = method_moments(method, sampling, torch.device("cpu"), flip_axes=(2, 3))
    if kind == "window":
        mean, std = WindowInferer((8, 8, 8), 3)(moments, array, sampling.seed, with_std=True)
    else:
        mean, std = SliceInferer(2, 5)(moments, array, sampling.seed, with_std=True)
    assert std.shape == array.shape[1:]
    # the sample std of 64 draws has a relative error ~ 1/sqrt(2*63) ≈ 9 % per voxel; the map's mean
    # and every 4-voxel-thick band across the volume (windows overlap there) stay within 5 %
    assert abs(float(std.mean()) - 0.3) < 0.015
    bands = [float(std[i:i + 4].mean()) for i in range(0, 24, 4)]
    assert max(abs(b - 0.3) for b in bands) < 0.015, bands
    np.testing.assert_allclose(mean.numpy(), 2 * array[0].numpy() + 1, atol=0.2)


def test_one_sample_gives_zero_std_and_no_std_is_computed_for_deterministic_methods() -> None:
    method, sampling = _stochastic(0.3, samples=1)
    array = torch.rand(1, 6, 8, 4)
    moments = method_moments(method, sampling, torch.device("cpu"))
    _, std = SliceInferer(2, 2)(moments, array, 0, with_std=True)
    assert torch.equal(std, torch.zeros_like(std))
    plain = method_moments(NetMethod(affine_net), Sampling(samples=8), torch.device("cpu"))
    _, std = SliceInferer(2, 2)(plain, array, 0, with_std=True)
    assert float(std.max()) == 0.0


@pytest.mark.parametrize("kind", ["slices", "window"])
def test_a_seed_gives_the_same_prediction_whatever_the_batch_size(kind: str) -> None:
    method, sampling = _stochastic(0.5, samples=2)
    array = torch.rand(1, 12, 10, 9)
    moments = method_moments(method, sampling, torch.device("cpu"))
    outs = []
    for batch in (1, 3, 16):
        inferer = WindowInferer((8, 8, 8), batch) if kind == "window" else SliceInferer(2, batch)
        outs.append(inferer(moments, array, 7, with_std=True))
    for mean, std in outs[1:]:
        assert torch.equal(mean, outs[0][0]) and torch.equal(std, outs[0][1])
    other = (WindowInferer((8, 8, 8), 2) if kind == "window" else SliceInferer(2, 2))(moments, array, 8, True)
    assert not torch.equal(other[0], outs[0][0])  # another seed, other noise
