"""Slices of volumes rendered as small base64 PNGs, windowed so panels of one subject compare."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from PIL import Image


def to_display(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient a volume so its axes are (R, A, S): axial slices are then ``out[:, :, k]``."""
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(np.asarray(array), ornt)


def pick_slices(foreground: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` evenly spaced axial indices over the slices that contain foreground."""
    occupied = np.flatnonzero(foreground.reshape(-1, foreground.shape[2]).any(axis=0))
    lo, hi = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, foreground.shape[2] - 1)
    n = min(count, hi - lo + 1)
    return sorted({int(round(v)) for v in np.linspace(lo, hi, n)})


def window(array: np.ndarray, mask: np.ndarray | None = None, low: float = 0.5,
           high: float = 99.5) -> tuple[float, float]:
    """Display range from percentiles (inside ``mask`` when given), never empty."""
    values = array[mask] if mask is not None and mask.any() else array.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _lut(colormap: str | None) -> np.ndarray | None:
    if colormap is None:
        return None
    from matplotlib import colormaps

    return (colormaps[colormap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def encode_slices(volume: np.ndarray, indices: Sequence[int], limits: tuple[float, float],
                  colormap: str | None = None) -> list[str]:
    """``data:image/png;base64,...`` URIs of axial slices ``indices`` of a display-oriented volume.

    Each slice is shown with anterior up and the patient's right on the left (radiological view).
    """
    lut = _lut(colormap)
    lo, hi = limits
    uris = []
    for k in indices:
        plane = np.asarray(volume[:, :, k], dtype=np.float64).T[::-1, ::-1]  # rows A→P, columns R→L
        scaled = np.clip((plane - lo) / (hi - lo), 0, 1)
        pixels = np.round(scaled * 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if lut is not None:  # a palette PNG: one byte per pixel, lossless, ~2.5× smaller than RGB
            image = Image.frombytes("P", image.size, pixels.tobytes())
            image.putpalette(lut.ravel().tolist())
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return uris
