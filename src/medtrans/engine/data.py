"""What the trainer needs from ``medtrans.data``: training samples, validation volumes, the data order.

``build_data`` runs the pipeline of the DESIGN contract (dataset → plan → splits → prepared cache →
sampler) and saves ``plan.json`` and ``splits.json`` in the run; on resume it reads them back from the
run so the resumed run trains on exactly the same subjects and normalisation. The sampler orders
its items by (seed, epoch, index) itself, so the trainer reads it sequentially from a position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medtrans.config import Config
from medtrans.errors import MedtransError

#: width of the plan's normalised intensity range [-1, 1] (PSNR/SSIM data range during validation)
MODEL_RANGE = 2.0

if TYPE_CHECKING:
    from medtrans.data.plan import Plan
    from medtrans.data.prepare import PreparedCache
    from medtrans.data.samplers import TrainingItems


@dataclass
class ValSubject:
    """One validation subject in model space: source (C, X, Y, Z), target and mask (X, Y, Z)."""

    id: str
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray | None


@dataclass
class TrainData:
    train: TrainingItems
    val: list[ValSubject]
    plan: Plan
    slice_axis: int
    patch_size: list[int] | None
    #: intensity range of model space, for PSNR/SSIM during validation
    data_range: float


def build_data(config: Config, run_dir: Path, reuse: bool) -> TrainData:
    """Dataset → splits → plan (on the training subjects) → prepared cache → sampler + validation volumes.

    With ``reuse`` (a resumed run) the run's own ``splits.json`` and ``plan.json`` are read back.
    """
    from medtrans.data.layouts import Dataset, open_dataset
    from medtrans.data.plan import Plan, make_plan
    from medtrans.data.prepare import PreparedCache
    from medtrans.data.samplers import make_sampler
    from medtrans.data.splits import load_splits, make_splits, save_splits
    from medtrans.engine.run import PLAN_FILE, SPLITS_FILE

    cfg = config.data
    dataset = open_dataset(cfg.root, layout=cfg.layout).require([*cfg.sources, cfg.target])
    splits_path, plan_path = run_dir / SPLITS_FILE, run_dir / PLAN_FILE
    if reuse:
        splits = load_splits(splits_path, dataset.ids)
    elif cfg.splits_file is not None:
        splits = load_splits(cfg.splits_file, dataset.ids)
        save_splits(splits, splits_path)
    else:
        fractions = (cfg.splits.train, cfg.splits.val, cfg.splits.test)
        splits = make_splits(dataset.ids, fractions, seed=config.seed)
        save_splits(splits, splits_path, seed=config.seed, fractions=fractions)

    if reuse:
        plan = Plan.load(plan_path)
    elif config.plan.path is not None:
        plan = Plan.load(config.plan.path)
        if plan.dims != cfg.dims:
            raise MedtransError(config.plan.path, f"the plan is for {plan.dims} but data.dims is {cfg.dims}",
                                "make a plan for these dims, or drop plan.path")
    else:
        train_only = Dataset(dataset.root, dataset.layout, [dataset.subject(s) for s in splits["train"]])
        try:
            plan = make_plan(train_only, cfg.sources, cfg.target, dims=cfg.dims, patch_size=cfg.patch_size,
                             **config.plan.options)
        except TypeError as err:
            raise MedtransError(None, f"plan.options rejected ({err})",
                                "see medtrans.data.plan.make_plan for the options") from None
    if not reuse:
        plan.save(plan_path)

    max_val = config.validation.max_subjects
    val_ids = splits["val"][:max_val] if max_val is not None else splits["val"]
    cache = PreparedCache(dataset, plan, cfg.cache_dir or run_dir / "cache",
                          subject_ids=[*splits["train"], *val_ids])
    train = make_sampler(cache, splits["train"], mode=cfg.dims, paired=cfg.paired, context=cfg.context,
                         patch_size=cfg.patch_size, seed=config.seed, samples_per_epoch=cfg.samples_per_epoch)
    return TrainData(train=train, val=[_val_subject(cache, plan, s) for s in val_ids], plan=plan,
                     slice_axis=plan.slice_axis, patch_size=list(train.size), data_range=MODEL_RANGE)


def _val_subject(cache: PreparedCache, plan: Plan, subject: str) -> ValSubject:
    """A subject's cached (slice-major) arrays back in (X, Y, Z) model-space order, read into memory."""

    def xyz(array: np.ndarray) -> np.ndarray:
        return np.array(np.moveaxis(array, 0, plan.slice_axis))

    source = np.stack([xyz(cache.array(subject, m)) for m in plan.sources]).astype(np.float32)
    return ValSubject(id=subject, source=source, target=xyz(cache.array(subject, plan.target)),
                      mask=xyz(cache.mask(subject)) > 0)
