"""Plain arrays: NPY, and 2D PNG/TIFF slices (8/16 bit), with a JSON sidecar for geometry.

These formats carry no geometry, so medtrans writes ``<name>.json`` beside the image:
``{"affine": 4x4 RAS, "spacing": [x, y, z], "modality": ..., "units": ..., "rescale": {...}}``.
A sidecar written by hand may give only ``spacing`` (and optionally ``origin``). Without any
sidecar the image is read at 1 mm with an identity orientation and ``meta["geometry_assumed"]``
is set, so ``medtrans info`` can say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medtrans.errors import MedtransError
from medtrans.io._common import as_3d, base_meta, split_extension
from medtrans.io.volume import Volume


def sidecar_path(path: Path) -> Path:
    stem, _ = split_extension(path)
    return path.with_name(f"{stem}.json")


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        data = json.loads(side.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if "affine" in data:
            data["affine"] = np.asarray(data["affine"], dtype=np.float64).reshape(4, 4)
        if "spacing" in data:
            data["spacing"] = np.broadcast_to(np.asarray(data["spacing"], dtype=np.float64), (3,))
    except (ValueError, TypeError) as err:
        raise MedtransError(side, f"geometry sidecar is not valid ({err})",
                            'write {"spacing": [x_mm, y_mm, z_mm]}, optionally "origin" or "affine"') from err
    return data


def _volume(array: np.ndarray, path: Path, fmt: str, modality: str | None) -> Volume:
    side = _read_sidecar(path)
    meta = base_meta(path, fmt, modality or (side or {}).get("modality"))
    if side is None:
        meta["geometry_assumed"] = True
        return Volume(array, np.eye(4), meta)
    rescale = side.get("rescale")
    if rescale:
        array = array.astype(np.float32) * np.float32(rescale["slope"]) + np.float32(rescale["intercept"])
    if side.get("units"):
        meta["units"] = side["units"]
    if side.get("synthetic"):
        meta["synthetic"] = side["synthetic"]
    if "affine" in side:
        affine = side["affine"]
    else:
        affine = np.diag([*side.get("spacing", np.ones(3)), 1.0])
        affine[:3, 3] = side.get("origin", (0.0, 0.0, 0.0))
    return Volume(array, affine, meta)


def read_npy(path: Path, modality: str | None = None) -> Volume:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise MedtransError(path, f"not a readable .npy array, truncated or corrupt ({err})",
                            "re-save it with numpy.save") from err
    if array.dtype.kind not in "biuf":
        raise MedtransError(path, f"array of dtype {array.dtype} is not an image", "save a numeric array")
    return _volume(as_3d(array, path), path, "npy", modality)


def read_picture(path: Path, modality: str | None = None) -> Volume:
    """8/16-bit greyscale PNG or TIFF (float TIFF too); colour only when all channels are equal."""
    try:
        with Image.open(path) as img:
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                raise MedtransError(path, f"image has {img.n_frames} pages/frames",
                                    "save one 2D slice per file, or a 3D volume as NIfTI/NPY")
            mode = img.mode
            pixels = np.asarray(img.convert("RGB") if mode == "P" else img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MedtransError(path, f"not a readable image, truncated or corrupt ({err})",
                            "re-export the image") from err
    if pixels.ndim == 3:  # grey + alpha ("LA") or colour whose R, G, B agree: keep the grey channel
        colour = range(1, 3) if mode != "LA" and pixels.shape[2] >= 3 else range(1, 1)
        if not all(np.array_equal(pixels[..., 0], pixels[..., c]) for c in colour):
            raise MedtransError(path, f"colour image ({mode}) is not a greyscale scan",
                                "convert it to greyscale (8 or 16 bit) first")
        pixels = pixels[..., 0]
    if mode == "1":
        pixels = pixels.astype(np.uint8)
    elif pixels.dtype == np.int32 and pixels.size and pixels.min() >= 0 and pixels.max() <= 65535:
        pixels = pixels.astype(np.uint16)  # PIL opens 16-bit PNG as 32-bit "I"
    fmt = "png" if path.suffix.lower() == ".png" else "tiff"
    return _volume(np.ascontiguousarray(pixels.T)[:, :, np.newaxis], path, fmt, modality)


def _write_sidecar(volume: Volume, path: Path, synthetic: str | None, rescale: dict | None) -> None:
    side: dict[str, Any] = {
        "affine": np.asarray(volume.affine).tolist(),
        "spacing": list(volume.spacing),
        "modality": volume.modality,
        "units": volume.meta.get("units"),
    }
    if rescale:
        side["rescale"] = rescale
    if synthetic:
        side["synthetic"] = synthetic
    sidecar_path(path).write_text(json.dumps(side, indent=1))


def write_npy(volume: Volume, path: Path, synthetic: str | None) -> None:
    """The array as it is (dtype kept) and its geometry in the sidecar."""
    np.save(path, np.asarray(volume.array))
    _write_sidecar(volume, path, synthetic, None)


def write_picture(volume: Volume, path: Path, synthetic: str | None) -> None:
    """One slice: uint8/uint16 as they are, anything else as uint16 with a rescale in the sidecar."""
    array = np.asarray(volume.array)
    if array.shape[2] != 1:
        raise MedtransError(path, f"PNG/TIFF hold one 2D slice; this volume has {array.shape[2]} slices",
                            "write a volume as .nii.gz/.mha/.npy, or pick one slice (array[:, :, k:k+1])")
    plane = array[:, :, 0].T
    rescale = None
    if plane.dtype == bool:
        plane = plane.astype(np.uint8)
    elif plane.dtype not in (np.uint8, np.uint16):
        lo, hi = float(plane.min()), float(plane.max())
        integer = np.array_equal(plane, np.round(plane))
        slope = 1.0 if integer and hi - lo <= 65535 else (hi - lo) / 65535.0 or 1.0
        plane = np.round((plane.astype(np.float64) - lo) / slope).astype(np.uint16)
        rescale = {"slope": slope, "intercept": lo}
    Image.fromarray(np.ascontiguousarray(plane)).save(path)
    _write_sidecar(volume, path, synthetic, rescale)
