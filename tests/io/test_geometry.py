"""Reorientation is an exact flip/transpose; resampling keeps values at their world positions."""

from __future__ import annotations

import numpy as np
import pytest

from medtrans.errors import MedtransError
from medtrans.io import Volume
from medtrans.io.geometry import reorient, resample_like, resample_to_spacing


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, shape (*shape, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _linear_field(world: np.ndarray) -> np.ndarray:
    """A function linear in world mm: linear interpolation reproduces it exactly."""
    return 3.0 * world[..., 0] - 2.0 * world[..., 1] + 0.5 * world[..., 2] + 7.0


@pytest.mark.parametrize("codes", ["LPS", "LAS", "PIR", "RAS"])
def test_reorient_keeps_every_voxel_at_its_world_position(codes: str, affine_for) -> None:
    shape = (5, 6, 7)
    affine = affine_for(codes)
    volume = Volume(_linear_field(_world(affine, shape)), affine, {"modality": "ct"})
    ras = reorient(volume, "RAS")
    assert ras.orientation == "RAS"
    np.testing.assert_allclose(ras.array, _linear_field(_world(ras.affine, ras.shape)), atol=1e-9)
    back = reorient(ras, codes)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-12)


def test_reorient_lps_to_ras_is_a_flip_of_the_first_two_axes(affine_for) -> None:
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    ras = reorient(Volume(array, affine_for("LPS"), {}), "RAS")
    np.testing.assert_array_equal(ras.array, array[::-1, ::-1, :])
    assert ras.array.dtype == np.int16


def test_reorient_rejects_a_bad_code() -> None:
    with pytest.raises(MedtransError, match="RRS"):
        reorient(Volume(np.zeros((2, 2, 2)), np.eye(4), {}), "RRS")


@pytest.mark.parametrize("oblique", [(0.0, 0.0, 0.0), (12.0, -20.0, 33.0)])
def test_resample_to_spacing_reproduces_a_linear_field(oblique, affine_for) -> None:
    shape = (10, 12, 8)
    affine = affine_for("LPS", spacing=(1.0, 1.5, 3.0), oblique=oblique)
    volume = Volume(_linear_field(_world(affine, shape)).astype(np.float32), affine, {})
    out = resample_to_spacing(volume, (2.0, 0.75, 1.5))
    assert out.shape == (5, 24, 16)
    np.testing.assert_allclose(out.spacing, (2.0, 0.75, 1.5), atol=1e-12)
    assert out.orientation == volume.orientation
    # the field of view keeps its centre
    centre = lambda v: v.affine[:3, :3] @ ((np.array(v.shape) - 1) / 2) + v.affine[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(out), centre(volume), atol=1e-9)
    # interior points (not in the one-voxel edge band) are exact for a linear field
    expected = _linear_field(_world(out.affine, out.shape))
    np.testing.assert_allclose(out.array[1:-1, 2:-2, 1:-1], expected[1:-1, 2:-2, 1:-1], rtol=1e-5, atol=1e-3)


def test_resample_like_nearest_keeps_labels_and_dtype(affine_for) -> None:
    labels = np.random.default_rng(1).integers(0, 4, size=(8, 8, 8)).astype(np.uint8)
    mask = Volume(labels, affine_for("RAS", spacing=(1, 1, 1)), {"modality": "mask"})
    grid = Volume(np.zeros((13, 11, 9)), affine_for("LAS", spacing=(0.7, 0.8, 0.9), oblique=(5, 0, 10)), {})
    out = resample_like(mask, grid, order=0)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(out.affine, grid.affine)


def test_resample_like_on_a_shifted_grid_moves_values_exactly_and_fills_outside(affine_for) -> None:
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 10
    affine = affine_for("RAS", spacing=(1, 2, 3), origin=(0, 0, 0))
    volume = Volume(array, affine, {})
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.array([2.0, 1.0, 0.0])  # grid starts at voxel (2, 1, 0)
    out = resample_like(volume, Volume(np.zeros((4, 5, 6)), shifted, {}), order=1)
    np.testing.assert_allclose(out.array[:2, :4, :], array[2:, 1:, :], atol=1e-4)
    # beyond the input's footprint: the fill value (default: the minimum, 10)
    assert np.all(out.array[2:, :, :] == 10) and np.all(out.array[:, 4, :] == 10)
    assert np.all(resample_like(volume, Volume(np.zeros((4, 5, 6)), shifted, {}), fill=-5).array[3] == -5)


def test_upsampling_keeps_edge_values_inside_the_voxel_footprint(affine_for) -> None:
    """A 2x finer grid over the same field of view starts a quarter voxel beyond the first centre."""
    array = np.arange(4, dtype=np.float32).reshape(4, 1, 1) * 10 + 100
    volume = Volume(array, affine_for("RAS", spacing=(2, 2, 2)), {})
    out = resample_to_spacing(volume, (1, 2, 2))
    np.testing.assert_allclose(
        out.array[:, 0, 0], [100, 102.5, 107.5, 112.5, 117.5, 122.5, 127.5, 130], atol=1e-4
    )


def test_resample_to_spacing_refuses_nonpositive_spacing() -> None:
    with pytest.raises(MedtransError, match="spacing"):
        resample_to_spacing(Volume(np.zeros((2, 2, 2)), np.eye(4), {}), (1, 0, 1))
