"""The Volume: an image array that carries its place in the world until the last write."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import nibabel as nib
import numpy as np


@dataclass
class Volume:
    """A scalar image with its geometry.

    - ``array``: voxel values indexed (i, j, k); always 3 spatial axes (a 2D slice has k of size 1).
    - ``affine``: 4x4 float64 mapping (i, j, k, 1) to RAS+ world millimetres, as nibabel uses.
    - ``meta``: ``modality`` (e.g. "ct", "t1"), ``units`` ("HU", "a.u.", ...), ``source`` (path read
      from), ``format`` (reader that produced it) and whatever a writer needs to write it back
      (e.g. ``dicom_reference``: the source series' file paths).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        """Axis codes such as 'RAS' or 'LPS' (the direction each voxel axis points towards)."""
        return "".join(nib.orientations.aff2axcodes(self.affine))

    @property
    def modality(self) -> str | None:
        return self.meta.get("modality")

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """Same geometry, new voxel values (e.g. a prediction), meta updated with ``meta``."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"shape {array.shape} does not match the volume's {self.array.shape}")
        return replace(self, array=array, affine=self.affine.copy(), meta={**self.meta, **meta})


@dataclass
class SyntheticInfo:
    """What makes a written image identifiable as synthetic, never as an acquisition."""

    model: str
    source: str
    method: str = ""
    target: str = ""
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    )

    def description(self, limit: int | None = None) -> str:
        """One line beginning 'SYNTHETIC' naming model and source (cut to ``limit`` chars)."""
        # the target modality comes first so it survives NIfTI's 80-character descrip
        text = "SYNTHETIC by medtrans" + (f" target={self.target}" if self.target else "")
        text += f" model={self.model}"
        if self.method:
            text += f" method={self.method}"
        text += f" from={self.source} at={self.created}"
        return text if limit is None else text[:limit]
