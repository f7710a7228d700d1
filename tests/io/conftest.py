"""Shared builders for the I/O tests: affines of known orientation, small test volumes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from medtrans.io import Volume

_DIRECTIONS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def _rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine_for(
    codes: str = "RAS",
    spacing=(0.9, 1.1, 2.5),
    origin=(-90.25, 120.5, -33.3),
    oblique: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A 4x4 RAS+ affine whose voxel axes point towards ``codes``, optionally rotated (oblique)."""
    direction = np.zeros((3, 3))
    for col, code in enumerate(codes):
        row, sign = _DIRECTIONS[code]
        direction[row, col] = sign
    affine = np.eye(4)
    affine[:3, :3] = _rotation(oblique) @ direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def affine_for() -> Callable[..., np.ndarray]:
    """``affine_for(codes, spacing, origin, oblique)`` -> a RAS+ affine of that orientation."""
    return _affine_for


@pytest.fixture
def make_volume() -> Callable[..., Volume]:
    """A small CT-like volume (HU, air to bone) with the requested geometry."""

    def build(
        codes: str = "RAS", oblique=(0.0, 0.0, 0.0), shape=(9, 8, 6), modality: str = "ct", seed: int = 0
    ) -> Volume:
        rng = np.random.default_rng(seed)
        array = rng.uniform(-1024, 3000, size=shape).astype(np.float32)
        if modality == "ct":
            array = np.round(array)
        return Volume(
            array,
            _affine_for(codes, oblique=oblique),
            {"modality": modality, "units": "HU" if modality == "ct" else "a.u."},
        )

    return build
