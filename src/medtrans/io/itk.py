"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) through SimpleITK.

ITK stores origin, spacing and a direction matrix in LPS millimetres and its arrays as (z, y, x);
both are turned into the medtrans convention here (RAS affine, array indexed (i, j, k)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medtrans.errors import MedtransError
from medtrans.io._common import LPS, as_3d, base_meta
from medtrans.io.volume import Volume

SYNTHETIC_KEY = "medtrans_synthetic"  # metadata key that marks a synthetic image
_MODALITY_KEY = "medtrans_modality"


def read(path: Path, modality: str | None = None) -> Volume:
    """Any scalar 2D/3D image SimpleITK reads; vector images and 4D are refused."""
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise MedtransError(path, f"not a readable image, truncated or corrupt ({first[:200]})",
                            "re-export the file; check it opens in 3D Slicer or ITK-SNAP") from err
    dim = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise MedtransError(
            path, f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel (vector/colour)",
            "extract one component first, e.g. SimpleITK.VectorIndexSelectionCast(img, 0)",
        )
    array = sitk.GetArrayFromImage(img)  # (z, y, x) or (t, z, y, x)
    array = as_3d(np.transpose(array, tuple(range(array.ndim))[::-1]), path)
    n = min(dim, 3)
    affine_lps = np.eye(4)
    direction = np.array(img.GetDirection()).reshape(dim, dim)[:n, :n]
    affine_lps[:n, :n] = direction @ np.diag(img.GetSpacing()[:n])
    affine_lps[:n, 3] = img.GetOrigin()[:n]
    keys = set(img.GetMetaDataKeys())
    named = img.GetMetaData(_MODALITY_KEY) if _MODALITY_KEY in keys else None
    meta = base_meta(path, "mha" if path.suffix.lower() in (".mha", ".mhd") else "nrrd", modality or named)
    if SYNTHETIC_KEY in keys:
        meta["synthetic"] = img.GetMetaData(SYNTHETIC_KEY)
    return Volume(array, LPS @ affine_lps, meta)


def _storage(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float64 or array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def grid(affine: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """ITK's (spacing, direction, origin) in LPS for a RAS affine."""
    affine_lps = LPS @ affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = (affine_lps[:3, :3] / spacing).ravel()
    return [float(s) for s in spacing], [float(v) for v in direction], [float(v) for v in affine_lps[:3, 3]]


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """An ITK image of ``array`` (i, j, k) placed by the RAS ``affine``."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    spacing, direction, origin = grid(affine)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    return img


def write(volume: Volume, path: Path, synthetic: str | None) -> None:
    """Compressed .mha/.nrrd (an .mhd/.nhdr gets its data file beside it), same dtype as the array."""
    img = to_sitk(_storage(np.asarray(volume.array)), volume.affine)
    if volume.modality:
        img.SetMetaData(_MODALITY_KEY, str(volume.modality))
    if synthetic:
        img.SetMetaData(SYNTHETIC_KEY, synthetic)
    sitk.WriteImage(img, str(path), useCompression=True)
