"""The plan: what a dataset's fingerprint decided, as a readable JSON a user may edit.

``make_plan`` reads headers of every subject (spacing, size, orientation) and the voxels of a few
(foreground intensity percentiles per modality), then fixes: canonical orientation (RAS), target
spacing (median of the target modality's spacings), slice axis (the axis with the coarsest spacing,
axial when isotropic), crop/patch size (multiples of 16) and one normaliser per modality with its
exact inverse. Training (``PreparedCache``) and inference (``to_model_space`` / ``from_model_space``)
both go through the same plan, so a prediction returns to the original grid and units.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medtrans.atomic import write_json
from medtrans.data.layouts import Dataset
from medtrans.data.modalities import canonical, family, units
from medtrans.data.normalise import Normaliser, foreground
from medtrans.data.survey import header_geometry
from medtrans.errors import MedtransError
from medtrans.io import Volume, load
from medtrans.io.geometry import reorient, resample_like, resample_to_spacing

DIMS = ("2d", "2.5d", "3d")
VERSION = 1
DIVISOR = 16
MAX_PATCH_VOXELS = 96**3
MAX_SLICE = 256
_FIELDS = (
    "medtrans_plan",
    "sources",
    "target",
    "dims",
    "orientation",
    "spacing",
    "slice_axis",
    "patch_size",
    "normalisation",
    "fingerprint",
    "subjects",
    "layout",
    "dataset_root",
)


@dataclass
class ModelSpace:
    """Where a model-space array came from: enough to put a prediction back on the original grid."""

    reference_affine: np.ndarray
    reference_shape: tuple[int, int, int]
    model_affine: np.ndarray
    stats: dict[str, dict[str, float]]
    target_stats: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)
    #: sources absent at inference (their channels are zeros; see ``data.missing``)
    missing: list[str] = field(default_factory=list)


def canonical_geometry(shape: tuple[int, ...], affine: np.ndarray) -> tuple[list[int], list[float]]:
    """Shape and spacing after reorienting to RAS (axes permuted as ``reorient`` does)."""
    ornt = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out_shape, out_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis, (world, _) in enumerate(ornt):
        out_shape[int(world)] = int(shape[axis])
        out_spacing[int(world)] = float(spacing[axis])
    return out_shape, out_spacing


def _round_up(n: float, k: int = DIVISOR) -> int:
    return int(np.ceil(n / k) * k)


def _patch_3d(shape: list[float]) -> list[int]:
    """Largest multiple-of-16 patch within the median shape and a 96³ voxel budget."""
    patch = [max(DIVISOR, int(s // DIVISOR) * DIVISOR) for s in shape]
    while int(np.prod(patch)) > MAX_PATCH_VOXELS:
        i = int(np.argmax(patch))
        patch[i] = max(DIVISOR, patch[i] - DIVISOR)
    return patch


@dataclass
class Plan:
    """Preprocessing decided once per task and dataset; saved with every run as ``plan.json``."""

    sources: list[str]
    target: str
    dims: str
    spacing: list[float]
    slice_axis: int
    patch_size: list[int]
    normalisation: dict[str, Normaliser]
    orientation: str = "RAS"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    subjects: list[str] = field(default_factory=list)
    layout: str = ""
    dataset_root: str = ""

    # ------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {
            "medtrans_plan": VERSION,
            "sources": list(self.sources),
            "target": self.target,
            "dims": self.dims,
            "orientation": self.orientation,
            "spacing": [float(s) for s in self.spacing],
            "slice_axis": int(self.slice_axis),
            "patch_size": [int(p) for p in self.patch_size],
            "normalisation": {m: n.to_dict() for m, n in self.normalisation.items()},
            "fingerprint": self.fingerprint,
            "subjects": list(self.subjects),
            "layout": self.layout,
            "dataset_root": self.dataset_root,
        }

    def hash(self) -> str:
        """Content hash of what changes the prepared arrays (not the fingerprint's bookkeeping)."""
        d = self.to_dict()
        key = {
            k: d[k] for k in ("sources", "target", "orientation", "spacing", "slice_axis", "normalisation")
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as indented JSON, atomically."""
        return write_json(path, self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any, path: str | os.PathLike | None = None) -> Plan:
        """Validate a plan dict (e.g. edited by hand); every problem is named in one error."""
        fix = "fix the file, or make a new one with: medtrans plan DATASET --source … --target … -o plan.json"
        if not isinstance(data, dict):
            raise MedtransError(path, "is not a plan (a JSON object is expected)", fix)
        errs = []
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            errs.append(f"unknown field(s) {', '.join(unknown)}")
        for key in ("sources", "target", "dims", "spacing", "slice_axis", "patch_size", "normalisation"):
            if key not in data:
                errs.append(f"missing field {key!r}")
        if errs:
            raise MedtransError(path, "plan: " + "; ".join(errs), fix)
        sources, target, dims = data["sources"], data["target"], data["dims"]
        if not (isinstance(sources, list) and sources and all(isinstance(s, str) and s for s in sources)):
            errs.append("'sources' must be a non-empty list of modality names")
            sources = []
        if not isinstance(target, str) or not target:
            errs.append("'target' must be a modality name")
        elif target in sources:
            errs.append(f"'target' {target!r} is also a source")
        if dims not in DIMS:
            errs.append(f"'dims' is {dims!r}, not one of {', '.join(DIMS)}")
        spacing = data["spacing"]
        if not (
            isinstance(spacing, list)
            and len(spacing) == 3
            and all(isinstance(s, (int, float)) and s > 0 for s in spacing)
        ):
            errs.append("'spacing' must be 3 positive numbers (mm)")
        if data["slice_axis"] not in (0, 1, 2):
            errs.append("'slice_axis' must be 0, 1 or 2")
        patch = data["patch_size"]
        want = 3 if dims == "3d" else 2
        if not (
            isinstance(patch, list)
            and len(patch) == want
            and all(isinstance(p, int) and p > 0 for p in patch)
        ):
            errs.append(f"'patch_size' must be {want} positive integers for dims {dims!r}")
        orientation = data.get("orientation", "RAS")
        if not (
            isinstance(orientation, str)
            and len(orientation) == 3
            and sorted("RLAPSI".index(c) // 2 for c in orientation.upper() if c in "RLAPSI") == [0, 1, 2]
        ):
            errs.append(f"'orientation' {orientation!r} must be three axis codes such as RAS")
        norms: dict[str, Normaliser] = {}
        raw = data["normalisation"]
        if not isinstance(raw, dict):
            errs.append("'normalisation' must map each modality to its normaliser")
            raw = {}
        for m in [*sources, target] if isinstance(target, str) else sources:
            if m not in raw:
                errs.append(f"'normalisation' has no entry for {m!r}")
                continue
            try:
                norms[m] = Normaliser.from_dict(raw[m])
            except (KeyError, TypeError, ValueError, AttributeError):
                errs.append(f"'normalisation.{m}' needs kind, params and reference")
                continue
            errs += [f"'normalisation.{m}': {p}" for p in norms[m].problems()]
        if errs:
            raise MedtransError(path, "plan: " + "; ".join(errs), fix)
        return cls(
            sources=list(sources),
            target=target,
            dims=dims,
            spacing=[float(s) for s in spacing],
            slice_axis=int(data["slice_axis"]),
            patch_size=[int(p) for p in patch],
            normalisation=norms,
            orientation=orientation.upper(),
            fingerprint=dict(data.get("fingerprint", {})),
            subjects=list(data.get("subjects", [])),
            layout=str(data.get("layout", "")),
            dataset_root=str(data.get("dataset_root", "")),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise MedtransError(
                path, "plan file not found", "make one with: medtrans plan DATASET … -o plan.json"
            )
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise MedtransError(
                path, f"is not valid JSON ({err})", "fix the file or make a new plan"
            ) from err
        return cls.from_dict(data, path)

    # ------------------------------------------------------------------------------------ datasets
    @property
    def modalities(self) -> list[str]:
        return [*self.sources, self.target]

    def check(self, dataset: Dataset, strict: bool = False) -> Dataset:
        """The dataset's subjects usable with this plan; a clear error when the plan does not fit it."""
        absent = [m for m in self.modalities if m not in dataset.modalities]
        if absent:
            raise MedtransError(
                dataset.root,
                f"plan needs {', '.join(absent)} but the dataset (layout "
                f"{dataset.layout}) has {', '.join(dataset.modalities) or 'no modality'}",
                "use a plan made for this dataset: medtrans plan DATASET --source … --target …",
            )
        return dataset.require(self.modalities, strict=strict)

    # ------------------------------------------------------------------------------------ geometry
    def _grid(self, volume: Volume) -> Volume:
        """``volume`` reoriented to the plan orientation and resampled to the plan spacing (linear)."""
        vol = reorient(volume, self.orientation)
        if np.allclose(vol.spacing, self.spacing, rtol=1e-4, atol=1e-5):
            return vol
        return resample_to_spacing(vol, self.spacing, order=1)

    def _normalise(self, modality: str, array: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        norm = self.normalisation[modality]
        stats = norm.stats(array)
        return norm.forward(array, stats), stats

    def prepare_subject(
        self, volumes: dict[str, Volume], mask: Volume | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, dict[str, float]], np.ndarray]:
        """Training arrays of one subject: every modality on the *target's* grid in model space.

        Returns (normalised arrays by modality, uint8 mask, per-modality stats, model affine). The
        mask is the dataset's (nearest neighbour) or, without one, the target's foreground.
        """
        ref = self._grid(volumes[self.target])
        arrays, stats = {}, {}
        for m in self.modalities:
            vol = ref if m == self.target else resample_like(volumes[m], ref, order=1)
            arrays[m], stats[m] = self._normalise(m, np.asarray(vol.array, np.float32))
        if mask is not None:
            mask_arr = np.asarray(resample_like(mask, ref, order=0).array) > 0
        elif family(self.target) == "ct":
            mask_arr = np.asarray(ref.array) > -500
        else:
            mask_arr = foreground(np.asarray(ref.array))
        return arrays, mask_arr.astype(np.uint8), stats, ref.affine

    def to_model_space(self, volumes: dict[str, Volume],
                       allow_missing: bool = False) -> tuple[np.ndarray, ModelSpace]:
        """Sources → (C, X, Y, Z) float32, normalised, in the plan's orientation and spacing.

        The first source's grid is the reference; the others are resampled onto it. With
        ``allow_missing`` (runs trained with source dropout) absent sources become zero channels, listed
        in ``ModelSpace.missing``, and the first present source is the reference.
        """
        missing = [m for m in self.sources if m not in volumes]
        if (missing and not allow_missing) or len(missing) == len(self.sources):
            raise MedtransError(
                None,
                f"the model needs source(s) {', '.join(missing)}; got {', '.join(volumes) or 'none'}",
                f"give {', '.join(self.sources)}" + ("" if allow_missing else
                                                      " (this run was not trained with data.source_dropout)"),
            )
        present = [m for m in self.sources if m in volumes]
        first = volumes[present[0]]
        ref = self._grid(first)
        channels, stats = [], {}
        for m in self.sources:
            if m in missing:
                channels.append(np.zeros(ref.array.shape[:3], np.float32))
                continue
            vol = ref if m == present[0] else resample_like(volumes[m], ref, order=1)
            arr, stats[m] = self._normalise(m, np.asarray(vol.array, np.float32))
            channels.append(arr)
        target_stats: dict[str, float] = {}
        if family(self.target) == "pet":
            pet_sources = [m for m in present if family(m) == "pet"]
            if pet_sources:
                target_stats = {"scale": stats[pet_sources[0]]["scale"]}
        space = ModelSpace(
            reference_affine=first.affine.copy(),
            reference_shape=tuple(first.array.shape[:3]),
            model_affine=ref.affine.copy(),
            stats=stats,
            target_stats=target_stats,
            meta={k: v for k, v in first.meta.items() if k in ("source", "format")},
            missing=missing,
        )
        return np.stack(channels).astype(np.float32, copy=False), space

    def from_model_space(self, array_xyz: np.ndarray, space: ModelSpace, spread: bool = False) -> Volume:
        """A model-space prediction (X, Y, Z) → target units on the first source's original grid.

        ``spread``: the array is a standard deviation, so only the scale of the inverse applies.
        """
        array = np.asarray(array_xyz, np.float32)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        normaliser = self.normalisation[self.target]
        if spread:
            values = normaliser.inverse_scale(array, space.target_stats)
        else:
            values = normaliser.inverse(array, space.target_stats)
        model = Volume(values, space.model_affine, {"modality": self.target})
        reference = Volume(np.broadcast_to(np.float32(0), space.reference_shape), space.reference_affine)
        out = resample_like(model, reference, order=1)
        meta = {**space.meta, "modality": self.target, "units": units(self.target)}
        return Volume(np.asarray(out.array, np.float32), space.reference_affine.copy(), meta)


def _pick(ids: list[str], n: int) -> list[str]:
    if len(ids) <= n:
        return list(ids)
    return [ids[i] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]


def make_plan(
    dataset: Dataset,
    sources: list[str],
    target: str,
    dims: str = "2d",
    strict: bool = False,
    max_intensity_subjects: int = 16,
    spacing: list[float] | None = None,
    patch_size: list[int] | None = None,
) -> Plan:
    """Fingerprint ``dataset`` for the task sources → target and decide the preprocessing."""
    sources = list(dict.fromkeys(canonical(s) for s in sources))
    target = canonical(target)
    if dims not in DIMS:
        raise MedtransError(None, f"dims {dims!r} is not known", f"use one of {', '.join(DIMS)}")
    if not sources:
        raise MedtransError(None, "no source modality given", "add --source, e.g. --source t1")
    if target in sources:
        raise MedtransError(None, f"target {target!r} is also a source", "choose a different target")
    usable = dataset.require([*sources, target], strict=strict)
    modalities = [*sources, target]
    geo: dict[str, list[tuple[list[int], list[float]]]] = {m: [] for m in modalities}
    for s in usable.subjects:
        for m in modalities:
            try:
                shape, affine = header_geometry(s.images[m])
            except Exception as err:  # an unreadable header is the user's to fix; say which file
                raise MedtransError(
                    s.images[m],
                    f"cannot read the image header ({err})",
                    "check the file, or remove the subject",
                ) from err
            geo[m].append(canonical_geometry(shape, affine))
    tgt_spacing = np.median(np.array([g[1] for g in geo[target]]), axis=0)
    plan_spacing = [float(round(v, 4)) for v in (spacing or tgt_spacing)]
    shapes = np.array([g[0] for g in geo[target]], dtype=np.float64)
    spacings = np.array([g[1] for g in geo[target]])
    model_shape = np.median(shapes * spacings / np.asarray(plan_spacing), axis=0)
    ratio = np.asarray(plan_spacing) / min(plan_spacing)
    slice_axis = int(np.argmax(plan_spacing)) if ratio.max() > 1.1 else 2
    if patch_size is None:
        if dims == "3d":
            patch_size = _patch_3d(list(model_shape))
        else:
            in_plane = [model_shape[a] for a in range(3) if a != slice_axis]
            patch_size = [min(MAX_SLICE, _round_up(s)) for s in in_plane]
    fingerprint: dict[str, Any] = {"subjects": len(usable.subjects), "modalities": {}}
    normalisation = {m: Normaliser.for_modality(m) for m in modalities}
    picked = _pick(usable.ids, max_intensity_subjects)
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in modalities}
    for sid in picked:
        rec = usable.subject(sid)
        for m in modalities:
            arr = np.asarray(load(rec.images[m], modality=m).array, np.float32)
            fg = arr[foreground(arr)] if family(m) != "ct" else arr[arr > -500]
            fg = fg if fg.size else arr.ravel()
            p = np.percentile(fg, [0.5, 50, 99.5])
            entry = {
                "p0.5": float(p[0]),
                "p50": float(p[1]),
                "p99.5": float(p[2]),
                **normalisation[m].stats(arr),
            }
            if family(m) == "pet":
                entry["ratio_p99.9"] = float(np.percentile(fg, 99.9) / max(entry["scale"], 1e-6))
            samples[m].append(entry)
    for m in modalities:
        med = {k: float(np.median([e[k] for e in samples[m]])) for k in samples[m][0]}
        norm = normalisation[m]
        if norm.kind == "mr_percentile":
            norm.reference = {"low": med["low"], "high": med["high"]}
        elif norm.kind == "pet_scale":
            norm.reference = {"scale": med["scale"]}
            norm.params["ratio_max"] = float(round(1.25 * max(e["ratio_p99.9"] for e in samples[m]), 3))
        g = geo[m]
        fingerprint["modalities"][m] = {
            "units": units(m),
            "normalisation": norm.kind,
            "spacing_median": [round(float(v), 4) for v in np.median([x[1] for x in g], axis=0)],
            "shape_median": [int(v) for v in np.median([x[0] for x in g], axis=0)],
            "foreground_percentiles_median": {k: round(med[k], 3) for k in ("p0.5", "p50", "p99.5")},
            "intensity_subjects": len(samples[m]),
        }
    fingerprint["model_shape_median"] = [int(round(v)) for v in model_shape]
    return Plan(
        sources=sources,
        target=target,
        dims=dims,
        spacing=plan_spacing,
        slice_axis=slice_axis,
        patch_size=[int(p) for p in patch_size],
        normalisation=normalisation,
        fingerprint=fingerprint,
        subjects=usable.ids,
        layout=dataset.layout,
        dataset_root=str(dataset.root),
    )
