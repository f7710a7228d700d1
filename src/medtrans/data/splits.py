"""Subject-level train/val/test splits: no slice of a test subject ever reaches training.

Rule for counts (n subjects, fractions train/val/test): val and test get ``round(n * fraction)``
subjects, at least 1 each when their fraction is above 0; train gets the rest. If that leaves train
empty, test gives up subjects first, then val, until train has 1. So 1 subject → train only;
2 → 1 train + 1 val; 3 → 1/1/1. The assignment is a seeded shuffle of the sorted ids, so the same
ids and seed always give the same split, whatever order the ids came in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medtrans.atomic import write_json
from medtrans.errors import MedtransError

SPLITS = ("train", "val", "test")


def make_splits(
    ids: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """Split subject ``ids`` into train/val/test by ``fractions`` (summing to 1), seeded."""
    ids = sorted(set(ids))
    if not ids:
        raise MedtransError(None, "no subjects to split", "check the dataset")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0:
        raise MedtransError(
            None,
            f"split fractions {tuple(fractions)} are not valid",
            "give three non-negative fractions (train > 0) that sum to 1, e.g. 0.7 0.15 0.15",
        )
    n = len(ids)
    counts = [0] + [max(1, round(n * f)) if f > 0 else 0 for f in fractions[1:]]
    while n - counts[1] - counts[2] < 1:
        k = 2 if counts[2] > 0 else 1
        counts[k] -= 1
    counts[0] = n - counts[1] - counts[2]
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    out, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        out[name] = sorted(order[start : start + count])
        start += count
    return out


def _check(splits: dict, path: str | os.PathLike | None, ids: Sequence[str] | None) -> dict[str, list[str]]:
    fix = 'write {"train": [ids], "val": [ids], "test": [ids]} with each subject in one list at most'
    if not isinstance(splits, dict) or "train" not in splits:
        raise MedtransError(path, "is not a splits file (needs at least a 'train' list)", fix)
    extra = sorted(set(splits) - set(SPLITS) - {"seed", "fractions"})
    if extra:
        raise MedtransError(path, f"unknown key(s) {', '.join(extra)}", fix)
    out = {}
    for name in SPLITS:
        value = splits.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MedtransError(path, f"'{name}' is not a list of subject ids", fix)
        out[name] = list(value)
    if not out["train"]:
        raise MedtransError(path, "the train split is empty", "put at least one subject in 'train'")
    seen: dict[str, str] = {}
    for name in SPLITS:
        for sid in out[name]:
            if sid in seen:
                raise MedtransError(path, f"subject {sid!r} is in both {seen[sid]} and {name}", fix)
            seen[sid] = name
    if ids is not None:
        unknown = sorted(set(seen) - set(ids))
        if unknown:
            raise MedtransError(
                path,
                f"subject(s) {', '.join(unknown[:8])} are not in the dataset",
                "use a splits file made for this dataset",
            )
    return out


def save_splits(
    splits: dict[str, list[str]],
    path: str | os.PathLike,
    seed: int | None = None,
    fractions: Sequence[float] | None = None,
) -> Path:
    """Write the splits as JSON (atomically), with the seed and fractions that made them."""
    path = Path(path)
    data: dict = _check(splits, path, None)
    if seed is not None:
        data["seed"] = int(seed)
    if fractions is not None:
        data["fractions"] = [float(f) for f in fractions]
    return write_json(path, data)


def load_splits(path: str | os.PathLike, ids: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Read a splits file (e.g. another run's ``splits.json``); checked for overlap and unknown ids."""
    path = Path(path)
    if not path.is_file():
        raise MedtransError(path, "splits file not found", "check the path")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise MedtransError(path, f"is not valid JSON ({err})", "fix the file") from err
    return _check(data, path, ids)
