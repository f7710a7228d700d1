"""Preprocessed arrays cached on disk, so an epoch never decodes NIfTI or resamples again.

``PreparedCache`` resamples each subject onto the plan's grid (the target modality's grid at the plan
spacing), normalises every modality, and stores float32 ``.npy`` files read back as memory maps.
Arrays are stored *slice-major*: the plan's slice axis first, so a 2D slice is one contiguous read.
The folder is named by the plan's hash: a changed plan gets a new folder, an unchanged plan reuses
what is there; a subject whose input files changed (size or modification time) is rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medtrans.atomic import atomic_path, write_json
from medtrans.data import registration as reg
from medtrans.data.layouts import Dataset, SubjectRecord
from medtrans.data.plan import Plan
from medtrans.errors import MedtransError
from medtrans.io import load

MAX_FOREGROUND_POINTS = 20000
ALIGNMENT_FILE = "alignment.csv"


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _signature(record: SubjectRecord, modalities: list[str]) -> dict[str, list]:
    """Input files with size and modification time: a change triggers a rebuild of the subject."""
    files = {m: record.images[m] for m in modalities}
    if record.mask is not None:
        files["mask"] = record.mask
    out = {}
    for name, path in files.items():
        st = Path(path).stat()
        out[name] = [str(path), st.st_size, st.st_mtime_ns]
    return out


class PreparedCache:
    """Normalised model-space arrays per subject and modality, built once, served as memory maps."""

    def __init__(
        self,
        dataset: Dataset,
        plan: Plan,
        cache_dir: str | os.PathLike,
        subject_ids: list[str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        usable = plan.check(dataset)
        ids = list(subject_ids) if subject_ids is not None else usable.ids
        unknown = [s for s in ids if s not in usable.ids]
        if unknown:
            raise MedtransError(
                dataset.root,
                f"subject(s) {', '.join(unknown[:8])} are not usable with this plan "
                f"(missing from the dataset or missing {', '.join(plan.modalities)})",
                "check the splits file against the dataset",
            )
        plan_hash = plan.hash()
        self.plan = plan
        self.folder = Path(cache_dir) / plan_hash
        self.subject_ids = ids
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest_path = self.folder / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if manifest.get("plan_hash") != plan_hash:
            manifest = {"plan_hash": plan_hash, "subjects": {}}
        self._manifest = manifest
        built = False
        for sid in ids:
            record = usable.subject(sid)
            sig = _signature(record, plan.modalities)
            if manifest["subjects"].get(sid, {}).get("files") != sig:
                self._build(record, sig)
                write_json(manifest_path, manifest)
                if progress:
                    progress(sid)
                built = True
        if plan.registration is not None and (built or not (self.folder / ALIGNMENT_FILE).is_file()):
            reg.write_csv(self.alignment, self.folder / ALIGNMENT_FILE)

    def _build(self, record: SubjectRecord, signature: dict[str, list]) -> None:
        plan = self.plan
        volumes = {m: load(record.images[m], modality=m) for m in plan.modalities}
        mask = load(record.mask) if record.mask is not None else None
        arrays, mask_arr, stats, affine, transforms, qa = plan.prepare_subject(volumes, mask, record.id)
        folder = self.folder / record.id
        folder.mkdir(parents=True, exist_ok=True)
        axis = plan.slice_axis
        for m, arr in arrays.items():
            _atomic_npy(
                folder / f"{m}.npy", np.ascontiguousarray(np.moveaxis(arr, axis, 0), dtype=np.float32)
            )
        _atomic_npy(folder / "mask.npy", np.ascontiguousarray(np.moveaxis(mask_arr, axis, 0), dtype=np.uint8))
        points = np.argwhere(mask_arr > 0).astype(np.int32)
        if len(points) > MAX_FOREGROUND_POINTS:
            rng = np.random.default_rng(0)
            points = points[np.sort(rng.choice(len(points), MAX_FOREGROUND_POINTS, replace=False))]
        _atomic_npy(folder / "foreground.npy", points)
        counts = mask_arr.sum(axis=tuple(a for a in range(3) if a != axis)).astype(np.int64)
        self._manifest["subjects"][record.id] = {
            "files": signature,
            "shape": [int(n) for n in mask_arr.shape],
            "affine": np.asarray(affine).round(6).tolist(),
            "stats": stats,
            "slice_foreground": counts.tolist(),
            "transforms": {m: np.asarray(t).round(8).tolist() for m, t in transforms.items()},
            "alignment": qa,
        }

    # ------------------------------------------------------------------------------------ access
    def __getstate__(self) -> dict[str, Any]:
        """Memory maps are reopened in each DataLoader worker rather than pickled."""
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _open(self, subject: str, name: str) -> np.ndarray:
        key = (subject, name)
        if key not in self._maps:
            self._maps[key] = np.load(self.folder / subject / f"{name}.npy", mmap_mode="r")
        return self._maps[key]

    def array(self, subject: str, modality: str) -> np.ndarray:
        """Normalised array (slice axis first: S, A, B) as a read-only memory map."""
        return self._open(subject, modality)

    def mask(self, subject: str) -> np.ndarray:
        """uint8 mask, slice axis first, like ``array``."""
        return self._open(subject, "mask")

    def foreground_points(self, subject: str) -> np.ndarray:
        """Up to 20000 foreground voxel indices (N, 3) in model-space (X, Y, Z) order."""
        return self._open(subject, "foreground")

    def shape(self, subject: str) -> tuple[int, int, int]:
        """Model-space (X, Y, Z) shape of the subject."""
        return tuple(self._manifest["subjects"][subject]["shape"])

    def stats(self, subject: str) -> dict[str, dict[str, float]]:
        """Per-modality normalisation statistics (what the inverse needs for this subject)."""
        return self._manifest["subjects"][subject]["stats"]

    def affine(self, subject: str) -> np.ndarray:
        return np.asarray(self._manifest["subjects"][subject]["affine"], dtype=np.float64)

    @property
    def alignment(self) -> list[dict[str, Any]]:
        """Alignment QA rows of this cache's subjects (empty without a registration block)."""
        subjects = self._manifest["subjects"]
        return [row for sid in self.subject_ids for row in subjects[sid].get("alignment", [])]

    def transforms(self, subject: str) -> dict[str, np.ndarray]:
        """Per source: the 4x4 RAS transform (target world → source world) used to prepare the subject."""
        stored = self._manifest["subjects"][subject].get("transforms", {})
        return {m: np.asarray(t) for m, t in stored.items()}

    def slice_foreground(self, subject: str) -> np.ndarray:
        """Foreground voxel count of each slice along the plan's slice axis."""
        return np.asarray(self._manifest["subjects"][subject]["slice_foreground"], dtype=np.int64)
