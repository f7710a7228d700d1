"""Pieces every reader and writer shares: names → modality, shape and value checks, safe writes."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from medtrans.errors import MedtransError
from medtrans.io.suffixes import split_image_name

# File-name tokens (case-insensitive) that name a modality, as datasets spell them:
# SynthRAD `ct.nii.gz`/`mr.mha`, BraTS `_t1n`/`_t2f`, BIDS `_T2w`, IXI `-PD`.
_MODALITY_TOKENS = {
    "ct": "ct", "sct": "ct", "cbct": "cbct", "mr": "mr", "mri": "mr",
    "t1": "t1", "t1w": "t1", "t1n": "t1", "t2": "t2", "t2w": "t2", "pd": "pd", "pdw": "pd",
    "flair": "flair", "t2f": "flair", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
    "pet": "pet", "pt": "pet", "mask": "mask", "seg": "mask", "label": "mask", "labels": "mask",
}
# Modalities whose voxel values are Hounsfield units once read (DICOM after rescale, NIfTI as stored).
_HU_MODALITIES = {"ct", "cbct"}

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM/ITK patient LPS <-> medtrans RAS (its own inverse)


def split_extension(path: Path) -> tuple[str, str]:
    """(stem, known extension lowercased) — ``''`` when the extension is not one we read."""
    return split_image_name(path.name) or (path.stem, "")


def modality_from_name(path: Path) -> str | None:
    """Modality named by the file (``t1.nii.gz``, ``sub-01_T2w.nii.gz``, ``ct.mha``), else None.

    The last matching token wins because datasets put the modality at the end of the name.
    """
    return modality_from_text(split_extension(path)[0])


def modality_from_text(text: str) -> str | None:
    """Modality named by a file stem or a DICOM SeriesDescription (last matching token)."""
    found = None
    for token in re.split(r"[_\-.\s]+", text.lower()):
        found = _MODALITY_TOKENS.get(token, found)
    return found


def units_for(modality: str | None) -> str:
    """HU for CT-like images, 'label' for masks, arbitrary units otherwise."""
    if modality in _HU_MODALITIES:
        return "HU"
    return "label" if modality == "mask" else "a.u."


def base_meta(path: Path, fmt: str, modality: str | None) -> dict:
    """The meta keys every reader fills (``modality`` argument > tags > file name)."""
    modality = modality or modality_from_name(path)
    return {"modality": modality, "units": units_for(modality), "source": str(path), "format": fmt}


def as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    """Give every image 3 spatial axes: 2D → (X, Y, 1); trailing singleton axes dropped; 4D refused."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return array[:, :, np.newaxis]
    if array.ndim == 3:
        return array
    raise MedtransError(
        path,
        f"image has {array.ndim} dimensions {tuple(array.shape)}; medtrans needs one 3D volume",
        f"pick one volume along the last axis (e.g. nibabel: img.slicer[..., 0]) or split it with "
        f"`fslsplit` / `nib.four_to_three`, then pass one {array.shape[:3]} volume",
    )


def check_finite(array: np.ndarray, path: Path | str | None) -> None:
    """NaN/Inf voxels poison training and metrics silently, so they are refused at the edge."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MedtransError(
            path,
            f"{count} voxel(s) are NaN or Inf (first at index {first})",
            "replace them before use, e.g. np.nan_to_num(array, nan=background) or a mask fill",
        )


def input_files(*paths: str | os.PathLike | None) -> set[Path]:
    """Resolved files behind the given inputs (a folder counts with everything below it)."""
    found: set[Path] = set()
    for p in paths:
        if not p:
            continue
        path = Path(p).resolve()
        found.add(path)
        if path.is_dir():
            found.update(child.resolve() for child in path.rglob("*"))
    return found


def refuse_overwrite(targets: Iterable[Path], inputs: set[Path]) -> None:
    """Outputs never replace an input: a synthetic image written over a scan destroys the scan."""
    for target in targets:
        if target.resolve() in inputs:
            raise MedtransError(
                target,
                "this is an input of the image being written; writing here would destroy it",
                "choose a different output path",
            )


@contextlib.contextmanager
def staged(final: Path) -> Iterator[Path]:
    """Write into a hidden folder beside ``final``, then move each file into place.

    Yields the staging path (same name as ``final``, so writers that pick a format or a companion
    file name from it, like MHD's ``.raw``, behave as for the real path). Companion files move
    first and ``final`` last, each with ``os.replace`` (atomic on one file system); on error the
    staging folder is removed and nothing appears at the destination. A folder written in place of
    a non-empty one (the caller has checked it may go) swaps in with two renames; the old one leaves
    with the staging folder. Staging folders of the same ``final`` left by a killed run are removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):  # left by a killed run
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield stage / final.name
        for item in sorted(stage.iterdir(), key=lambda p: p.name == final.name):
            target = final.parent / item.name
            if item.is_dir() and target.is_dir() and any(target.iterdir()):
                os.replace(target, stage / ".replaced")
            os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
