"""Reorientation and resampling that keep every voxel at its place in RAS world millimetres.

Resampling uses ``scipy.ndimage.affine_transform`` rather than SimpleITK: it works on the numpy
array in voxel space with one 4x4 matrix taken from the two affines, so there is no LPS/RAS flip,
no copy into an ITK image and no origin/direction bookkeeping to get wrong; output grid points that
coincide with input voxels return those voxel values exactly, and an axis-aligned grid change (the
common case: new spacing, same orientation) goes through scipy's separable fast path for diagonal
matrices. Reorientation never interpolates: it is an exact flip/transpose (nibabel orientations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import nibabel as nib
import numpy as np
from scipy import ndimage

from medtrans.errors import MedtransError
from medtrans.io.volume import Volume

_AXIS_OF = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def reorient(volume: Volume, codes: str = "RAS") -> Volume:
    """Same voxels, flipped/transposed so the axes point towards ``codes`` (e.g. "RAS", "LPS").

    Exact and invertible: ``reorient(reorient(v, "RAS"), v.orientation)`` gives ``v`` back.
    For oblique images the axes go to the nearest world axes (as nibabel's ``as_closest_canonical``).
    """
    codes = codes.upper()
    if len(codes) != 3 or sorted(_AXIS_OF.get(c, -1) for c in codes) != [0, 1, 2]:
        raise MedtransError(
            volume.meta.get("source"), f"orientation code {codes!r} is not valid",
            "use three letters, one of R/L, A/P, S/I each, such as RAS or LPS",
        )
    target = nib.orientations.axcodes2ornt(tuple(codes))
    current = nib.orientations.io_orientation(volume.affine)
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape[:3])
    return replace(volume, array=np.ascontiguousarray(array), affine=affine, meta=dict(volume.meta))


def _resample(volume: Volume, affine: np.ndarray, shape: tuple[int, int, int], order: int,
              fill: float | None) -> Volume:
    """Values of ``volume`` on the grid (``affine``, ``shape``).

    Grid points up to one voxel beyond the input's edge take the edge value (so a finer grid over the
    same field of view has no fill rim); points further out take ``fill`` (default: the volume's
    minimum, i.e. air for CT, background for MR and masks).
    """
    if order not in (0, 1, 3):
        raise MedtransError(volume.meta.get("source"), f"interpolation order {order} is not supported",
                            "use order=0 (nearest, for masks/labels), 1 (linear) or 3 (cubic)")
    source = np.asarray(volume.array)
    if fill is None:
        fill = float(source.min()) if source.size else 0.0
    # voxel (output) -> world -> voxel (input); +1 for the one-voxel edge pad below
    mapping = np.linalg.inv(volume.affine) @ affine
    matrix, offset = mapping[:3, :3], mapping[:3, 3] + 1.0
    if order == 0:
        work = source
    else:
        work = source.astype(np.float64 if source.dtype == np.float64 else np.float32, copy=False)
    padded = np.pad(work, 1, mode="edge")
    if np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-12):
        matrix = np.diag(matrix)  # scipy's separable path for axis-aligned grids
    out = ndimage.affine_transform(padded, matrix, offset=offset, output_shape=tuple(shape), order=order,
                                   mode="constant", cval=fill, prefilter=order > 1)
    return replace(volume, array=out, affine=np.array(affine, dtype=np.float64), meta=dict(volume.meta))


def resample_to_spacing(volume: Volume, spacing: float | Sequence[float], order: int = 1,
                        fill: float | None = None) -> Volume:
    """Resample onto ``spacing`` mm (per axis i, j, k), same orientation and same field-of-view centre.

    ``order=1`` (linear) for images, ``order=0`` (nearest) for masks and labels. The new shape is
    ``round(shape * old_spacing / spacing)`` (at least 1).
    """
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if not np.all(target > 0):
        raise MedtransError(volume.meta.get("source"), f"target spacing {tuple(target)} is not positive",
                            "give a spacing in mm greater than 0 for each axis")
    old = np.asarray(volume.spacing)
    shape = np.asarray(volume.array.shape[:3], dtype=np.float64)
    new_shape = np.maximum(1, np.round(shape * old / target)).astype(int)
    direction = volume.affine[:3, :3] / old
    # keep the grid centre: centre index (n - 1) / 2 maps to the same world point
    centre = volume.affine[:3, :3] @ ((shape - 1) / 2) + volume.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = direction * target
    affine[:3, 3] = centre - affine[:3, :3] @ ((new_shape - 1) / 2)
    return _resample(volume, affine, tuple(int(n) for n in new_shape), order, fill)


def resample_like(volume: Volume, reference: Volume, order: int = 1, fill: float | None = None) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (shape and affine), e.g. to pair T1 with T2.

    ``order=1`` (linear) for images, ``order=0`` (nearest) for masks and labels.
    """
    return _resample(volume, reference.affine, tuple(reference.array.shape[:3]), order, fill)
