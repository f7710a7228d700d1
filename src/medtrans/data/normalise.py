"""Intensity normalisation per modality, each with its exact inverse, so outputs return to real units.

Three kinds, all mapping the useful range onto [-1, 1] (background lands on -1):

- ``ct_window`` (CT, CBCT, low-dose CT): a fixed HU window, ``y = 2 (clip(x, lo, hi) - lo) / (hi - lo) - 1``
  with ``[lo, hi] = [-1024, 3000]`` (the SynthRAD range). Same for every subject: HU mean the same
  thing everywhere, so no per-subject number is needed to invert it.
- ``mr_percentile`` (MR): clip to the subject's foreground 0.5 and 99.5 percentiles and scale the
  same way. MR units are arbitrary, so the per-subject numbers *are* the scale.
- ``pet_scale`` (PET): divide by the subject's mean foreground uptake (a per-subject scale, like a
  reference-region SUV ratio), then map ``[0, ratio_max]`` onto [-1, 1]; ``ratio_max`` is fixed in
  the plan from the fingerprint so hot spots are not clipped.

The inverse is exact (to float rounding) for values inside the clip range; values outside were
clipped by the forward map and come back as the range limits.

Inverse for a *target* at inference, where the subject's own target image does not exist: CT needs
nothing; MR and PET use the dataset reference stored in the plan (medians over the fingerprint
subjects), except a PET target translated from a PET-family source (low-count PET → PET), which
takes the source's own scale, since both images of one subject share the same quantitative scale.

Foreground for the per-subject statistics is ``x > 10 % of the 99th percentile``, computed from the
image alone, so training and inference use the same rule without a mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtrans.data.modalities import family

KINDS = ("ct_window", "mr_percentile", "pet_scale")
CT_WINDOW = (-1024.0, 3000.0)


def foreground(array: np.ndarray) -> np.ndarray:
    """Boolean foreground: voxels above 10 % of the 99th percentile (of a subsample, for speed)."""
    sample = np.asarray(array[::2, ::2, ::2] if array.ndim == 3 and array.size > 64**3 else array, np.float32)
    threshold = 0.1 * float(np.percentile(sample, 99))
    return np.asarray(array) > threshold


def _scale(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = max(hi - lo, 1e-6)
    out = (np.clip(np.asarray(array, np.float32), lo, hi) - np.float32(lo)) * np.float32(2.0 / span) - 1.0
    return out.astype(np.float32, copy=False)


def _unscale(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = max(hi - lo, 1e-6)
    return ((np.asarray(array, np.float32) + 1.0) * np.float32(span / 2.0) + np.float32(lo)).astype(
        np.float32
    )


@dataclass
class Normaliser:
    """One modality's normalisation: its kind, fixed parameters and the dataset reference statistics."""

    kind: str
    params: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)

    @classmethod
    def for_modality(cls, modality: str) -> Normaliser:
        fam = family(modality)
        if fam == "ct":
            return cls("ct_window", {"low": CT_WINDOW[0], "high": CT_WINDOW[1]})
        if fam == "pet":
            return cls("pet_scale", {"ratio_max": 20.0})
        return cls("mr_percentile", {"low_percentile": 0.5, "high_percentile": 99.5})

    def stats(self, array: np.ndarray) -> dict[str, float]:
        """Per-subject numbers the forward map needs (none for CT)."""
        if self.kind == "ct_window":
            return {}
        values = np.asarray(array, np.float32)[foreground(array)]
        if values.size == 0:
            values = np.asarray(array, np.float32).ravel()
        if self.kind == "mr_percentile":
            lo, hi = np.percentile(values, [self.params["low_percentile"], self.params["high_percentile"]])
            return {"low": float(lo), "high": float(max(hi, lo + 1e-3))}
        return {"scale": float(max(values.mean(), 1e-6))}

    def _range(self, stats: dict[str, float]) -> tuple[float, float]:
        if self.kind == "ct_window":
            return self.params["low"], self.params["high"]
        merged = {**self.reference, **stats}
        if self.kind == "mr_percentile":
            return merged["low"], merged["high"]
        return 0.0, self.params["ratio_max"] * merged["scale"]

    def forward(self, array: np.ndarray, stats: dict[str, float]) -> np.ndarray:
        """Real units → [-1, 1] float32."""
        return _scale(array, *self._range(stats))

    def inverse(self, array: np.ndarray, stats: dict[str, float]) -> np.ndarray:
        """[-1, 1] → real units (HU, SUV, scanner units); ``stats`` empty → the dataset reference."""
        return _unscale(array, *self._range(stats))

    def inverse_scale(self, array: np.ndarray, stats: dict[str, float]) -> np.ndarray:
        """The linear part of ``inverse`` only: a spread (std map) in model space → real units."""
        lo, hi = self._range(stats)
        return (np.asarray(array, np.float32) * np.float32(max(hi - lo, 1e-6) / 2.0)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params), "reference": dict(self.reference)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normaliser:
        return cls(
            str(data["kind"]),
            {k: float(v) for k, v in data.get("params", {}).items()},
            {k: float(v) for k, v in data.get("reference", {}).items()},
        )

    def problems(self) -> list[str]:
        """What is wrong with this normaliser as written in a plan (empty when valid)."""
        need = {
            "ct_window": ("low", "high"),
            "mr_percentile": ("low_percentile", "high_percentile"),
            "pet_scale": ("ratio_max",),
        }
        if self.kind not in need:
            return [f"kind {self.kind!r} is not one of {', '.join(KINDS)}"]
        out = [f"params needs {k!r}" for k in need[self.kind] if k not in self.params]
        if self.kind == "ct_window" and not out and self.params["high"] <= self.params["low"]:
            out.append("params high must be above low")
        ref_need = {"mr_percentile": ("low", "high"), "pet_scale": ("scale",)}.get(self.kind, ())
        out += [f"reference needs {k!r} (dataset statistics)" for k in ref_need if k not in self.reference]
        return out
