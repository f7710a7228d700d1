"""NIfTI-1 (.nii, .nii.gz) through nibabel, keeping qform/sform codes and scaling sensible."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medtrans.errors import MedtransError
from medtrans.io._common import as_3d, base_meta
from medtrans.io.volume import Volume

_SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT: world coordinates of the scanner, what DICOM/ITK also give
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def _has_scaling(img: nib.Nifti1Image) -> bool:
    """nibabel moves scl_slope/scl_inter from the loaded header onto the array proxy."""
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    return bool(slope != 1 or inter != 0)


def read(path: Path, modality: str | None = None) -> Volume:
    """Stored dtype when the file is unscaled (masks stay integers); float when scl_slope/inter apply."""
    try:
        img = nib.load(str(path), mmap=False)  # no memory map: the array never changes under us
        header = img.header
        if _has_scaling(img):
            dtype = np.float64 if img.get_data_dtype() == np.float64 else np.float32
            array = img.get_fdata(dtype=dtype)
        else:
            array = np.asarray(img.dataobj)
    except _READ_ERRORS as err:
        raise MedtransError(
            path, f"not a readable NIfTI file, truncated or corrupt ({type(err).__name__}: {err})",
            "re-export or re-download the file; check it opens in 3D Slicer or `nib-ls`",
        ) from err
    if not isinstance(header, nib.Nifti1Header):
        raise MedtransError(path, f"{type(img).__name__} is not a NIfTI-1/2 image", "convert it to NIfTI")
    meta = base_meta(path, "nifti", modality)
    descrip = header["descrip"].item().decode("latin-1").strip("\x00 ")
    meta["nifti"] = {
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "descrip": descrip,
    }
    if not (meta["nifti"]["qform_code"] or meta["nifti"]["sform_code"]):
        meta["geometry_assumed"] = True  # both codes 0: nibabel falls back to zooms only
    if descrip.startswith("SYNTHETIC"):
        comments = [e.get_content() for e in header.extensions if e.get_code() == 6]
        full = [c.decode("utf-8", "replace") for c in comments if c.startswith(b"SYNTHETIC")]
        meta["synthetic"] = full[0] if full else descrip
    return Volume(as_3d(array, path), img.affine, meta)


def _storage(array: np.ndarray) -> np.ndarray:
    """On-disk dtype: float32 for floats (no scaling, exact for CT/MR), compact ints kept."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if array.dtype in (np.int64, np.uint64) and array.size:
        lo, hi = int(array.min()), int(array.max())
        if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
            return array.astype(np.int32)
    return array


def write(volume: Volume, path: Path, synthetic: str | None) -> None:
    """Write ``volume`` to ``path`` (already a staging path); qform/sform codes come back from meta."""
    img = nib.Nifti1Image(_storage(np.asarray(volume.array)), volume.affine)
    header = img.header
    codes = volume.meta.get("nifti", {})
    img.set_qform(volume.affine, code=int(codes.get("qform_code", _SCANNER)))
    img.set_sform(volume.affine, code=int(codes.get("sform_code", _SCANNER)))
    header.set_xyzt_units("mm", "sec")
    header.set_slope_inter(np.nan, np.nan)
    if synthetic:
        header["descrip"] = synthetic[:80].encode("latin-1", "replace")
        header.set_intent("none", name="SYNTHETIC")
        header.extensions.append(nib.nifti1.Nifti1Extension("comment", synthetic.encode("utf-8")))
    elif codes.get("descrip") and not codes["descrip"].startswith("SYNTHETIC"):
        header["descrip"] = codes["descrip"][:80].encode("latin-1", "replace")
    nib.save(img, str(path))
