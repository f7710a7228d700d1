"""Medical image I/O that keeps geometry: ``load``, ``save``, ``describe`` and the ``Volume``.

The readers (nibabel, pydicom, SimpleITK) are imported on first use, so that modules which only look
for image files (``IMAGE_SUFFIXES``) stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

from medtrans.io.suffixes import IMAGE_SUFFIXES, split_image_name

_LAZY = {"describe": "api", "load": "api", "save": "api", "SyntheticInfo": "volume", "Volume": "volume"}

__all__ = ["IMAGE_SUFFIXES", "SyntheticInfo", "Volume", "describe", "load", "save", "split_image_name"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"medtrans.io.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'medtrans.io' has no attribute {name!r}")
