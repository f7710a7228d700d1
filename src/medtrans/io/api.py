"""``load``, ``save`` and ``describe``: one entry point per direction, the format taken from the path."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from medtrans.errors import MedtransError
from medtrans.io import arrays, dicom, itk, nifti
from medtrans.io._common import (
    check_finite,
    input_files,
    refuse_overwrite,
    split_extension,
    staged,
    units_for,
)
from medtrans.io.suffixes import IMAGE_SUFFIXES
from medtrans.io.volume import SyntheticInfo, Volume

_READERS = {
    ".nii": nifti.read, ".nii.gz": nifti.read, ".dcm": dicom.read_file,
    ".mha": itk.read, ".mhd": itk.read, ".nrrd": itk.read, ".nhdr": itk.read,
    ".npy": arrays.read_npy, ".png": arrays.read_picture, ".tif": arrays.read_picture,
    ".tiff": arrays.read_picture,
}
_WRITERS = {
    ".nii": nifti.write, ".nii.gz": nifti.write,
    ".mha": itk.write, ".mhd": itk.write, ".nrrd": itk.write, ".nhdr": itk.write,
    ".npy": arrays.write_npy, ".png": arrays.write_picture, ".tif": arrays.write_picture,
    ".tiff": arrays.write_picture,
}
_SIDECAR_FORMATS = (".npy", ".png", ".tif", ".tiff")


def _unknown_extension(path: Path, writing: bool) -> MedtransError:
    verb = "write" if writing else "read"
    return MedtransError(
        path, f"cannot {verb} this file type (extension {''.join(path.suffixes) or 'none'!r})",
        f"use one of {', '.join(IMAGE_SUFFIXES)}" + (" or a folder for a DICOM series" if writing else ""),
    )


def load(path: str | os.PathLike, *, modality: str | None = None, series_uid: str | None = None) -> Volume:
    """Read one 3D image; ``modality`` overrides what tags or the file name say.

    ``series_uid`` picks one series from a DICOM folder that holds several.
    """
    path = Path(path).expanduser()
    _check_readable(path)
    if path.is_dir():
        volume = dicom.read_folder(path, modality, series_uid)
    else:
        _, ext = split_extension(path)
        reader = _READERS.get(ext) or (dicom.read_file if dicom.is_dicom_file(path) else None)
        if reader is None:
            raise _unknown_extension(path, writing=False)
        volume = reader(path, modality)
    check_finite(volume.array, path)
    target = marked_target(volume)
    if modality is None and target:  # what a prediction synthesises beats names guessed from files/tags
        volume.meta.update(modality=target, units=units_for(target))
    return volume


def _check_readable(path: Path) -> None:
    """A missing path or one the user may not read gets its own message, not "truncated or corrupt"."""
    try:
        if not path.exists():
            raise MedtransError(path, "does not exist", "check the path and the current directory")
        for file in [f for f in path.iterdir() if f.is_file()] if path.is_dir() else [path]:
            with open(file, "rb"):
                pass
    except PermissionError as err:
        denied = Path(err.filename) if err.filename else path
        raise MedtransError(denied, "permission denied: you may not read this file or folder",
                            "ask its owner for read access (e.g. chmod u+r), or copy it somewhere you "
                            "can read it") from None


def marked_target(volume: Volume) -> str | None:
    """The modality a medtrans prediction synthesises, from its SYNTHETIC marking (``target=ct``)."""
    found = re.search(r"\btarget=(\w+)", volume.meta.get("synthetic") or "")
    return found.group(1).lower() if found else None


def _synthetic_text(volume: Volume, synthetic: SyntheticInfo | str | None) -> str | None:
    """A synthetic image stays marked when saved again, even without a new ``synthetic``."""
    if isinstance(synthetic, SyntheticInfo):
        return synthetic.description()
    if synthetic:
        if not str(synthetic).startswith("SYNTHETIC"):
            return f"SYNTHETIC {synthetic}"
        return str(synthetic)
    return volume.meta.get("synthetic")


def save(volume: Volume, path: str | os.PathLike, *, reference: Volume | str | os.PathLike | None = None,
         synthetic: SyntheticInfo | str | None = None) -> Path:
    """Write ``volume`` atomically in the format named by ``path``; returns the path written.

    Never writes over ``volume.meta["source"]`` or the reference's files.
    """
    path = Path(path).expanduser()
    _, ext = split_extension(path)
    series = path.is_dir() or (not path.exists() and not path.suffix)
    writer = _WRITERS.get(ext)
    if writer is None and not series and ext != ".dcm":
        raise _unknown_extension(path, writing=True)
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise MedtransError(path, f"volume array has shape {array.shape}, not 3 spatial axes",
                            "give a Volume whose array is (X, Y, Z); a 2D slice is (X, Y, 1)")
    check_finite(array, path)
    source = volume.meta.get("source")
    inputs = input_files(source, *dicom.reference_files(reference))
    if source:
        inputs.add(arrays.sidecar_path(Path(source)).resolve())  # e.g. a BIDS .json beside the scan
    refuse_overwrite([path, arrays.sidecar_path(path)] if ext in _SIDECAR_FORMATS else [path], inputs)
    text = _synthetic_text(volume, synthetic)
    mark = synthetic if isinstance(synthetic, SyntheticInfo) else text  # DICOM builds its own wording
    if series:
        if path.is_dir() and any(path.iterdir()) and not dicom.is_medtrans_series(path):
            raise MedtransError(path, "output folder is not empty (and not a series medtrans wrote earlier)",
                                "give a new or empty folder path: a DICOM series needs a folder of its own")
        with staged(path) as stage:
            dicom.write_series(volume, stage, reference, mark)
    elif ext == ".dcm":
        if array.shape[2] != 1:
            raise MedtransError(path, f"a single .dcm file holds one slice, this volume has {array.shape[2]}",
                                "give a folder path (no extension) to write a DICOM series")
        with staged(path) as stage:
            folder = stage.parent / "series"
            dicom.write_series(volume, folder, reference, mark)
            os.replace(next(folder.iterdir()), stage)
            folder.rmdir()
    else:
        with staged(path) as stage:
            writer(volume, stage, text)
    return path


def describe(path: str | os.PathLike, *, modality: str | None = None,
             series_uid: str | None = None) -> dict[str, Any]:
    """What ``medtrans info`` prints: geometry, value range, modality and format of one image."""
    volume = load(path, modality=modality, series_uid=series_uid)
    array = np.asarray(volume.array)
    info: dict[str, Any] = {
        "path": str(path),
        "format": volume.meta.get("format"),
        "modality": volume.modality,
        "units": volume.meta.get("units"),
        "shape": tuple(int(n) for n in array.shape),
        "spacing": tuple(round(s, 6) for s in volume.spacing),
        "orientation": volume.orientation,
        "affine": np.round(volume.affine, 6).tolist(),
        "dtype": str(array.dtype),
        "min": float(array.min()) if array.size else None,
        "max": float(array.max()) if array.size else None,
    }
    for key in ("series_uid", "series_description", "synthetic", "geometry_assumed"):
        if volume.meta.get(key):
            info[key] = volume.meta[key]
    return info
