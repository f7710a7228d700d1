"""Whole-volume inference on plain tensors: slicing, 2.5D stacks, sliding window, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtrans.engine.predictor import context_stack, flip_tta, infer_slices, infer_window


def affine_net(x: torch.Tensor) -> torch.Tensor:
    """Pointwise: 2·(channel 0) + 1, so every voxel's expected output is known."""
    return 2 * x[:, :1] + 1


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slices_cover_the_volume_whatever_axis_and_size(slice_axis: int) -> None:
    rng = np.random.default_rng(0)
    array = torch.from_numpy(rng.normal(size=(2, 13, 37, 9)).astype(np.float32))
    seen: list[tuple[int, ...]] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return affine_net(x)

    out = infer_slices(net, array, slice_axis, batch_size=4)
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
    out = infer_slices(lambda x: x[:, 2:3], array, slice_axis=2, batch_size=3, context=2)
    np.testing.assert_array_equal(out.numpy(), array[0].numpy())


def test_sliding_window_blends_patches_back_to_the_volume() -> None:
    rng = np.random.default_rng(2)
    array = torch.from_numpy(rng.normal(size=(1, 20, 17, 11)).astype(np.float32))
    calls: list[tuple[int, ...]] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return affine_net(x)

    out = infer_window(net, array, patch_size=(8, 8, 8), batch_size=2)
    assert out.shape == (20, 17, 11)
    np.testing.assert_allclose(out.numpy(), 2 * array[0].numpy() + 1, rtol=1e-5, atol=1e-5)
    assert all(c[2:] == (8, 8, 8) for c in calls) and len(calls) > 1


def test_sliding_window_pads_a_volume_smaller_than_the_patch() -> None:
    array = torch.linspace(-1, 1, 5 * 6 * 4).reshape(1, 5, 6, 4)
    out = infer_window(affine_net, array, patch_size=(8, 8, 8), batch_size=1)
    np.testing.assert_allclose(out.numpy(), 2 * array[0].numpy() + 1, rtol=1e-5, atol=1e-5)


def test_flip_tta_averages_flips_and_undoes_them() -> None:
    width = 10
    ramp = torch.arange(width, dtype=torch.float32)

    def net(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant: weights depend on the column
        return x * ramp

    x = torch.rand(2, 1, 6, width)
    got = flip_tta(net, (2, 3))(x)
    # flips along H leave the ramp alone; flips along W average it with its mirror
    np.testing.assert_allclose(got.numpy(), (x * (ramp + ramp.flip(0)) / 2).numpy(), rtol=1e-6)
    # an equivariant net is unchanged by TTA
    np.testing.assert_allclose(flip_tta(affine_net, (2, 3))(x).numpy(), affine_net(x).numpy(), rtol=1e-6)


def test_tta_in_slices_and_windows_keeps_shape() -> None:
    array = torch.rand(1, 9, 10, 7)
    slices = infer_slices(affine_net, array, slice_axis=1, batch_size=4, tta=True)
    window = infer_window(affine_net, array, patch_size=(8, 8, 8), batch_size=2, slice_axis=1, tta=True)
    for out in (slices, window):
        np.testing.assert_allclose(out.numpy(), 2 * array[0].numpy() + 1, rtol=1e-5, atol=1e-5)
