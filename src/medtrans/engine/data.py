"""What the trainer needs from ``medtrans.data``: training samples, validation volumes, the data order.

``build_data`` runs the pipeline of the DESIGN contract (dataset → plan → splits → prepared cache →
sampler) and saves ``plan.json`` and ``splits.json`` in the run; on resume it reads them back from the
run so the resumed run trains on exactly the same subjects and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from medtrans.config import Config


@dataclass
class ValSubject:
    """One validation subject in model space: source (C, X, Y, Z), target and mask (X, Y, Z)."""

    id: str
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray | None


@dataclass
class TrainData:
    train: Dataset
    val: list[ValSubject]
    plan: Any
    slice_axis: int
    patch_size: list[int] | None
    #: intensity range of model space, for PSNR/SSIM during validation
    data_range: float


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, start: int = 0) -> list[list[int]]:
    """The batches of one epoch (full batches only), from batch ``start`` on.

    The order is a permutation drawn from (seed, epoch) alone, so skipping the ``start`` batches a
    checkpoint already consumed gives the resumed run exactly the batches it would have seen.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(start, n // batch_size)]


def build_data(config: Config, run_dir: Path, reuse: bool) -> TrainData:
    raise NotImplementedError
