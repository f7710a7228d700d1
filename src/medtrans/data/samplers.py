"""Training samples from a ``PreparedCache``: 2D slices, 2.5D stacks and 3D patches, paired or unpaired.

Every item is a function of (seed, epoch, index) only: the dataset shuffles itself (use the
DataLoader with ``shuffle=False``) and ``set_epoch`` moves to the next epoch's order, so a resumed run
continues exactly the same sequence, with any number of workers.

- ``2d``: one slice along the plan's slice axis (or ``axis``), in-plane axes in increasing order,
  only slices that hold foreground; cropped (random offset) or padded (centred, value -1, the
  normalised background) to ``patch_size`` (H, W).
- ``2.5d``: the same slice with ``context`` neighbours on each side of each source as channels,
  grouped per source (source 0's ``s-context … s+context``, then source 1's …); indices past either
  end repeat the end slice (as the predictor does). The target and mask are the centre slice.
- ``3d``: a ``patch_size`` (X, Y, Z) patch; with probability ``foreground_fraction`` centred on a
  random foreground voxel, else anywhere.
- unpaired: the target (and ``target_subject``) comes from another subject, with its own slice or
  patch position; ``mask`` is the source's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from medtrans.data.prepare import PreparedCache
from medtrans.errors import MedtransError

MODES = ("2d", "2.5d", "3d")


def _fit(array: np.ndarray, size: Sequence[int], start: Sequence[int], fill: float) -> np.ndarray:
    """``array[start : start + size]`` per axis, padded with ``fill`` where it leaves the array."""
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for n, s, st in zip(array.shape, size, start, strict=True):
        lo, hi = max(st, 0), min(st + s, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - st, lo - st + max(hi - lo, 0)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _start(rng: np.random.Generator, n: int, size: int) -> int:
    """Random crop start when the axis is longer than ``size``, else the centring (negative) offset."""
    return int(rng.integers(0, n - size + 1)) if n > size else -((size - n) // 2)


class TrainingItems(TorchDataset):
    """A torch Dataset of training items drawn deterministically from a PreparedCache."""

    def __init__(
        self,
        cache: PreparedCache,
        subject_ids: Sequence[str],
        mode: str = "2d",
        paired: bool = True,
        context: int = 1,
        patch_size: Sequence[int] | None = None,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        axis: int | None = None,
        foreground_fraction: float = 0.67,
    ) -> None:
        if mode not in MODES:
            raise MedtransError(None, f"sampler mode {mode!r} is not known", f"use one of {', '.join(MODES)}")
        ids = list(subject_ids)
        if not ids:
            raise MedtransError(None, "no subjects to sample from", "check the split: it has no subject")
        missing = [s for s in ids if s not in cache.subject_ids]
        if missing:
            raise MedtransError(
                cache.folder,
                f"subject(s) {', '.join(missing[:8])} are not in the cache",
                "build the cache with these subjects",
            )
        if not paired and len(ids) < 2:
            raise MedtransError(None, "unpaired sampling needs at least 2 subjects", "add subjects")
        plan = cache.plan
        self.cache, self.ids, self.mode, self.paired = cache, ids, mode, paired
        self.context = int(context) if mode == "2.5d" else 0
        self.seed, self.epoch = int(seed), 0
        self.axis = plan.slice_axis if axis is None else int(axis)
        self.sources, self.target = list(plan.sources), plan.target
        self.foreground_fraction = float(foreground_fraction)
        want = 3 if mode == "3d" else 2
        size = list(patch_size) if patch_size is not None else None
        if size is None:
            size = list(plan.patch_size) if len(plan.patch_size) == want else self._default_size(want)
        if len(size) != want:
            raise MedtransError(
                None,
                f"patch_size {size} has {len(size)} sizes; mode {mode} needs {want}",
                "give (H, W) for 2d/2.5d or (X, Y, Z) for 3d",
            )
        self.size = [int(s) for s in size]
        if mode == "3d":
            self.items = np.arange(len(ids))
            self.length = samples_per_epoch or 4 * len(ids)
        else:
            self._by_subject = {i: np.flatnonzero(self._slice_counts(sid)) for i, sid in enumerate(ids)}
            slices = [(i, s) for i, found in self._by_subject.items() for s in found]
            if not slices:
                raise MedtransError(cache.folder, "no slice holds foreground", "check the masks")
            self.items = np.asarray(slices, dtype=np.int64)
            self.length = samples_per_epoch or len(self.items)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _default_size(self, want: int) -> list[int]:
        shapes = np.array([self.cache.shape(s) for s in self.ids])
        full = np.max(shapes, axis=0)
        if want == 3:
            return [int(min(n, 96)) for n in full]
        return [int(-(-full[a] // 16) * 16) for a in range(3) if a != self.axis]

    def _slice_counts(self, subject: str) -> np.ndarray:
        if self.axis == self.cache.plan.slice_axis:
            return self.cache.slice_foreground(subject)
        mask = self._volume(subject, "mask")
        return mask.sum(axis=tuple(a for a in range(3) if a != self.axis))

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``'s order (and crops); call before each epoch, also after resuming."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.length)

    def _order(self, rnd: int) -> np.ndarray:
        key = (self.epoch, rnd)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] == self.epoch}
            rng = np.random.default_rng([self.seed, self.epoch, rnd, 7])
            self._orders[key] = rng.permutation(len(self.items))
        return self._orders[key]

    # ------------------------------------------------------------------------------------ arrays
    def _volume(self, subject: str, name: str) -> np.ndarray:
        """(X, Y, Z) view of a cached (slice-major) array, without copying."""
        arr = self.cache.mask(subject) if name == "mask" else self.cache.array(subject, name)
        return np.moveaxis(arr, 0, self.cache.plan.slice_axis)

    def _slab(self, subject: str, name: str, index: int) -> np.ndarray:
        """One slice (A, B) along the sampler's axis."""
        if self.axis == self.cache.plan.slice_axis:
            return np.asarray(
                self.cache.mask(subject)[index] if name == "mask" else self.cache.array(subject, name)[index]
            )
        return np.take(self._volume(subject, name), index, axis=self.axis)

    def _slice_item(
        self, rng: np.random.Generator, subject: str, index: int, with_sources: bool
    ) -> dict[str, np.ndarray]:
        mask = self._slab(subject, "mask", index)
        start = [_start(rng, mask.shape[a], self.size[a]) for a in range(2)]
        out = {
            "target": _fit(self._slab(subject, self.target, index), self.size, start, -1.0)[None],
            "mask": _fit(mask, self.size, start, 0)[None],
        }
        if with_sources:
            total = self.cache.shape(subject)[self.axis]
            offsets = range(index - self.context, index + self.context + 1)
            chans = [
                _fit(self._slab(subject, m, min(max(k, 0), total - 1)), self.size, start, -1.0)
                for m in self.sources
                for k in offsets
            ]
            out["source"] = np.stack(chans)
        return out

    def _patch_item(
        self, rng: np.random.Generator, subject: str, with_sources: bool
    ) -> dict[str, np.ndarray]:
        shape = self.cache.shape(subject)
        points = self.cache.foreground_points(subject)
        if len(points) and rng.random() < self.foreground_fraction:
            centre = np.asarray(points[int(rng.integers(len(points)))])
        else:
            centre = np.array([rng.integers(0, n) for n in shape])
        start = []
        for c, n, s in zip(centre, shape, self.size, strict=True):
            st = int(c) - s // 2
            start.append(min(max(st, 0), n - s) if n >= s else -((s - n) // 2))
        out = {
            "target": _fit(self._volume(subject, self.target), self.size, start, -1.0)[None],
            "mask": _fit(self._volume(subject, "mask"), self.size, start, 0)[None],
        }
        if with_sources:
            out["source"] = np.stack(
                [_fit(self._volume(subject, m), self.size, start, -1.0) for m in self.sources]
            )
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rnd, pos = divmod(int(index), len(self.items))
        item = self.items[self._order(rnd)[pos]]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        if self.mode == "3d":
            subject = self.ids[int(item)]
            out = self._patch_item(rng, subject, with_sources=True)
        else:
            subject = self.ids[int(item[0])]
            out = self._slice_item(rng, subject, int(item[1]), with_sources=True)
        result: dict[str, Any] = {}
        if not self.paired:
            others = [i for i in range(len(self.ids)) if self.ids[i] != subject]
            other = int(others[int(rng.integers(len(others)))])
            partner = self.ids[other]
            if self.mode == "3d":
                out["target"] = self._patch_item(rng, partner, with_sources=False)["target"]
            else:
                candidates = self._by_subject[other]
                out["target"] = self._slice_item(
                    rng, partner, int(candidates[int(rng.integers(len(candidates)))]), with_sources=False
                )["target"]
            result["target_subject"] = partner
        result.update(
            {
                "source": torch.from_numpy(np.ascontiguousarray(out["source"], dtype=np.float32)),
                "target": torch.from_numpy(np.ascontiguousarray(out["target"], dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.float32)),
                "subject": subject,
            }
        )
        return result


def make_sampler(cache: PreparedCache, subject_ids: Sequence[str], **options: Any) -> TrainingItems:
    """The training dataset (2d, 2.5d, 3d; see the module docstring); ``options`` as for
    ``TrainingItems``."""
    return TrainingItems(cache, subject_ids, **options)
