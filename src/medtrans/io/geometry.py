"""Reorientation and resampling that keep every voxel at its place in RAS world millimetres.

Resampling uses SimpleITK's ResampleImageFilter rather than ``scipy.ndimage.affine_transform``.
Both are exact to float32 rounding (on the same grids they agree to 2.4e-7 axis-aligned and 1.5e-8
oblique), but ITK runs multi-threaded: linear resampling of 160x160x120 float32 onto a 1.3 mm grid
took 0.023 s against scipy's 0.046 s axis-aligned and 0.025 s against 0.063 s oblique (medians of 11,
2 cores; command in docs/IO.md). ITK also treats the input as filling its voxels' footprint: output
points up to half a voxel beyond the edge voxel centres get the edge value, points further out get
``fill``, with no ad-hoc padding. The LPS/RAS bookkeeping lives in one
place (``medtrans.io.itk.grid``). Reorientation never interpolates: it is an exact flip/transpose
(nibabel orientations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medtrans.errors import MedtransError
from medtrans.io._common import LPS
from medtrans.io.itk import grid, to_sitk
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


_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


def world_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    """ITK transform (LPS) of a 4x4 RAS matrix mapping output world points to input world points."""
    lps = LPS @ np.asarray(matrix, dtype=np.float64) @ LPS
    out = sitk.AffineTransform(3)
    out.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    out.SetTranslation([float(v) for v in lps[:3, 3]])
    return out


def _resample(volume: Volume, affine: np.ndarray, shape: tuple[int, int, int], order: int,
              fill: float | None, transform: np.ndarray | None = None) -> Volume:
    """Values of ``volume`` on the grid (``affine``, ``shape``), optionally through ``transform``
    (4x4 RAS: output world point → input world point, e.g. a registration result).

    Grid points inside the input's voxel footprint (up to half a voxel beyond the edge voxels' centres)
    are interpolated; points further out take ``fill`` (default: the volume's minimum, i.e. air for CT,
    background for MR and masks). Order 0 keeps the dtype; orders 1 and 3 give float32 (float64 stays).
    """
    if order not in _INTERPOLATORS:
        raise MedtransError(volume.meta.get("source"), f"interpolation order {order} is not supported",
                            "use order=0 (nearest, for masks/labels), 1 (linear) or 3 (cubic)")
    source = np.asarray(volume.array)
    if fill is None:
        fill = float(source.min()) if source.size else 0.0
    work = source.astype(np.uint8) if source.dtype == bool else source
    if work.dtype == np.float16:
        work = work.astype(np.float32)
    image = to_sitk(work, volume.affine)
    spacing, direction, origin = grid(affine)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in shape])
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputDirection(direction)
    resampler.SetOutputOrigin(origin)
    resampler.SetInterpolator(_INTERPOLATORS[order])
    resampler.SetDefaultPixelValue(fill)
    if transform is not None:
        resampler.SetTransform(world_transform(transform))
    if order > 0:
        resampler.SetOutputPixelType(sitk.sitkFloat64 if work.dtype == np.float64 else sitk.sitkFloat32)
    out = np.transpose(sitk.GetArrayFromImage(resampler.Execute(image)), (2, 1, 0))
    if source.dtype == bool and order == 0:
        out = out.astype(bool)
    return replace(volume, array=np.ascontiguousarray(out), affine=np.array(affine, dtype=np.float64),
                   meta=dict(volume.meta))


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


def resample_like(volume: Volume, reference: Volume, order: int = 1, fill: float | None = None,
                  transform: np.ndarray | None = None) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (shape and affine), e.g. to pair T1 with T2.

    ``order=1`` (linear) for images, ``order=0`` (nearest) for masks and labels. ``transform`` (4x4 RAS,
    reference world → ``volume`` world) applies a registration on the way.
    """
    return _resample(volume, reference.affine, tuple(reference.array.shape[:3]), order, fill, transform)
