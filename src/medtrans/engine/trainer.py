"""One training loop for every method: groups, AMP, EMA, schedules, validation, exact resume.

Per step, for each of the method's optimiser groups in order, the other groups' parameters are frozen,
``method.losses(batch, group)`` runs under autocast (bf16 when ``optim.amp``), the sum of the terms is
backpropagated, the group's gradients are clipped and its optimiser and scheduler step; then the EMA
copy is updated. The sampler's order is a function of (seed, epoch) and the checkpoint records the
position inside the epoch, so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from medtrans.config import Config, OptimConfig, dump_config
from medtrans.data.missing import drop_sources, with_availability
from medtrans.engine import checkpoint as ckpt
from medtrans.engine.data import TrainData, ValSubject, build_data
from medtrans.engine.inferers import Sampling, SliceInferer, build_inferer, method_moments
from medtrans.engine.predictor import resolve_device
from medtrans.engine.run import CONFIG_FILE, build_method, read_run_config
from medtrans.engine.runlog import MetricLog, sample_grid, save_figure
from medtrans.errors import MedtransError
from medtrans.methods.base import Method

#: validation subjects drawn in each sample grid
GRID_SUBJECTS = 4


@dataclass
class Progress:
    """Where the run is: what ``state.json`` stores besides tensors."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches already consumed in ``epoch``
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    best_step: int | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the run only (restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    bench = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = bench


def lr_factor(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: linear warm-up, then constant, cosine or step decay."""

    def factor(step: int) -> float:
        if step < optim.warmup:
            return (step + 1) / optim.warmup
        after = step - optim.warmup
        if optim.schedule == "cosine":
            span = max(1, total_steps - optim.warmup)
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, after / span)))
            return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine
        if optim.schedule == "step":
            return optim.gamma ** (after // optim.step_size)
        return 1.0

    return factor


def ema_update(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """EMA step with the decay ramped up as min(decay, (1 + n) / (10 + n)) after n updates.

    With a fixed 0.999 the average of a short run would still be mostly the random initialisation
    (0.999**1000 ≈ 0.37); the ramp lets early checkpoints already follow the trained weights.
    """

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = int(num_averaged)
        weight = 1.0 - min(decay, (1 + n) / (10 + n))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def make_optimizer(optim: OptimConfig, params: list[nn.Parameter],
                   overrides: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam or AdamW with the config's settings, updated by the method's per-group overrides."""
    settings: dict[str, Any] = {"lr": optim.lr, "betas": tuple(optim.betas),
                                "weight_decay": optim.weight_decay}
    settings.update(overrides)
    cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return cls(params, **settings)


def default_run_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(config.runs_dir) / f"{config.name or config.method.name}-{stamp}"


class Trainer:
    """Builds everything a run needs, then ``fit`` runs the steps; see module docstring."""

    def __init__(self, config: Config, run_dir: Path, resume: bool) -> None:
        self.config = config
        self.run_dir = run_dir
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data: TrainData = build_data(config, run_dir, reuse=resume)
        self.spatial_dims = config.data.spatial_dims
        self.memory_format = self._memory_format()
        self.method: Method = build_method(config).to(self.device)
        if self.memory_format is not None:
            self.method = self.method.to(memory_format=self.memory_format)
        self.groups = tuple(self.method.groups)
        self.group_params = {g: list(self.method.group_parameters(g)) for g in self.groups}
        self._check_groups()
        self.steps_per_epoch = len(self.data.train) // config.optim.batch_size
        if self.steps_per_epoch < 1:
            raise MedtransError(config.data.root, f"only {len(self.data.train)} training samples for batch "
                                f"size {config.optim.batch_size}", "lower optim.batch_size or add subjects")
        self.total_steps = config.optim.steps or config.optim.epochs * self.steps_per_epoch
        factor = lr_factor(config.optim, self.total_steps)
        self.optimizers = {
            g: make_optimizer(config.optim, self.group_params[g], self.method.optimizer_settings(g))
            for g in self.groups
        }
        self.schedulers = {g: LambdaLR(opt, factor) for g, opt in self.optimizers.items()}
        self.ema = None
        if config.optim.ema is not None:
            self.ema = AveragedModel(self.method, multi_avg_fn=ema_update(config.optim.ema),
                                     use_buffers=True)
        self.progress = Progress()
        if resume:
            self._load(run_dir / "checkpoints" / "last")

    def _memory_format(self) -> torch.memory_format | None:
        if not self.config.optim.channels_last:
            return None
        return torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d

    def _check_groups(self) -> None:
        seen: dict[int, str] = {}
        for group, params in self.group_params.items():
            for p in params:
                if id(p) in seen:
                    raise MedtransError(None, f"method {self.config.method.name!r} puts a parameter in "
                                        f"groups {seen[id(p)]!r} and {group!r}",
                                        "each parameter belongs to one group")
                seen[id(p)] = group

    # ----------------------------------------------------------------------------------- state
    def _state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors: dict[str, Tensor] = {f"method.{k}": v for k, v in self.method.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        p = self.progress
        state = {
            "step": p.step, "epoch": p.epoch, "position": p.position,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "history": p.history, "best": p.best, "best_step": p.best_step,
            "metric": self.config.validation.metric, "config_hash": self.config.training_hash(),
            "optimizers": {g: ckpt.split_tensors(o.state_dict(), f"optim.{g}", tensors)
                           for g, o in self.optimizers.items()},
            "schedulers": {g: ckpt.split_tensors(s.state_dict(), f"sched.{g}", tensors)
                           for g, s in self.schedulers.items()},
            "rng": ckpt.rng_state(tensors),
        }
        return state, tensors

    def save(self, which: str) -> Path:
        state, tensors = self._state()
        model = self.ema.module.state_dict() if self.ema is not None else self.method.state_dict()
        meta = {"method": self.config.method.name, "step": str(self.progress.step),
                "ema": str(self.ema is not None)}
        return ckpt.save_checkpoint(self.run_dir / "checkpoints" / which, model, tensors, state, meta)

    def _load(self, folder: Path) -> None:
        state, tensors = ckpt.load_state(folder)
        if state["config_hash"] != self.config.training_hash():
            raise MedtransError(folder, "the checkpoint was written with a different training config",
                                "resume with the run's own config.yaml")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise MedtransError(folder, f"an epoch had {state['steps_per_epoch']} steps, now "
                                f"{self.steps_per_epoch}", "resume with the same data and batch size")
        self.method.load_state_dict(ckpt.prefixed(tensors, "method"))
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.prefixed(tensors, "ema"))
        for g, opt in self.optimizers.items():
            opt.load_state_dict(ckpt.join_tensors(state["optimizers"][g], tensors))
        for g, sched in self.schedulers.items():
            sched.load_state_dict(ckpt.join_tensors(state["schedulers"][g], tensors))
        ckpt.set_rng_state(state["rng"], tensors)
        self.progress = Progress(step=state["step"], epoch=state["epoch"], position=state["position"],
                                 history=state["history"], best=state["best"], best_step=state["best_step"])

    # ----------------------------------------------------------------------------------- steps
    def _autocast(self) -> Any:
        if not self.config.optim.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in batch.items():
            if isinstance(value, Tensor):
                value = value.to(self.device, non_blocking=True)
                if self.memory_format is not None and value.dim() == self.spatial_dims + 2:
                    value = value.contiguous(memory_format=self.memory_format)
            out[key] = value
        return out

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One update of every group in order; returns the named loss values ``group/name``."""
        logged: dict[str, float] = {}
        if self.config.data.source_dropout > 0:  # the same dropped batch for every group
            batch = {**batch, "source": drop_sources(batch["source"], len(self.config.data.sources),
                                                     self.config.data.source_dropout)}
        for group in self.groups:
            frozen = [p for g, ps in self.group_params.items() if g != group for p in ps if p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
            try:
                opt = self.optimizers[group]
                opt.zero_grad(set_to_none=True)
                with self._autocast():
                    terms = self.method.losses(batch, group, self.progress.step)
                total = torch.stack([t.float() for t in terms.values()]).sum()
                if not torch.isfinite(total):
                    raise MedtransError(self.run_dir, f"loss of group {group!r} became {total.item()} at "
                                        f"step {self.progress.step + 1}", "lower optim.lr, set "
                                        "optim.grad_clip, or turn optim.amp off")
                total.backward()
                if self.config.optim.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.group_params[group], self.config.optim.grad_clip)
                opt.step()
                self.schedulers[group].step()
            finally:
                for p in frozen:
                    p.requires_grad_(True)
            logged.update({f"{group}/{name}": float(v.detach()) for name, v in terms.items()})
        if self.ema is not None:
            self.ema.update_parameters(self.method)
        return logged

    def batches(self) -> Iterator[dict[str, Any]]:
        """Batches from the current (epoch, position) on, forever, advancing epoch and position."""
        bs = self.config.optim.batch_size
        while True:
            self.data.train.set_epoch(self.progress.epoch)
            # the sampler's item i is a function of (seed, epoch, i): read it in order from the position
            loader = torch.utils.data.DataLoader(
                self.data.train,
                batch_size=bs,
                sampler=range(self.progress.position * bs, self.steps_per_epoch * bs),
                drop_last=True,
                num_workers=self.config.data.num_workers,
                # its own generator: creating the loader must not draw from the global torch RNG
                generator=torch.Generator().manual_seed(self.config.seed + self.progress.epoch),
                pin_memory=self.device.type == "cuda",
            )
            yield from loader
            self.progress.epoch += 1
            self.progress.position = 0

    # ----------------------------------------------------------------------------------- validation
    def eval_model(self) -> Method:
        return self.ema.module if self.ema is not None else self.method

    def _predict(self, model: Method, subject: ValSubject) -> tuple[np.ndarray, np.ndarray | None]:
        """The validation prediction, by the inference path of ``medtrans predict`` (one sample at the
        run's inference steps); multi-step methods on ``validation.max_slices`` foreground slices
        only, returned as a boolean slice selection (None: the whole volume)."""
        cfg = self.config
        inferer = build_inferer(cfg.data.dims, self.data.slice_axis, cfg.optim.batch_size, cfg.data.context,
                                self.data.patch_size, cfg.inference.overlap)
        sampling = Sampling(steps=cfg.inference.steps if model.default_steps is not None else None,
                            seed=cfg.inference.seed)
        moments = method_moments(model, sampling, self.device, cfg.optim.amp, self.memory_format)
        source = subject.source
        if cfg.data.source_dropout > 0:  # every source present at validation
            source = with_availability(source, [True] * len(cfg.data.sources))
        array = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))
        chosen = None
        multi_step = model.default_steps is not None
        if isinstance(inferer, SliceInferer) and multi_step and cfg.validation.max_slices:
            chosen = _foreground_slices(subject, self.data.slice_axis, cfg.validation.max_slices)
            mean, _ = inferer(moments, array, sampling.seed, with_std=False, indices=chosen)
        else:
            mean, _ = inferer(moments, array, sampling.seed, with_std=False)
        if chosen is None:
            return mean.numpy(), None
        keep = np.zeros(array.shape[1 + self.data.slice_axis], bool)
        keep[chosen] = True
        return mean.numpy(), keep

    @torch.no_grad()
    def validate(self, log: MetricLog) -> dict[str, float] | None:
        """PSNR / SSIM / MAE in model space on whole validation volumes; a sample grid; ``best``."""
        from medtrans.metrics import mae, psnr, ssim

        subjects = self.data.val
        if not subjects:
            return None
        model = self.eval_model()
        model.eval()
        scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "mae": []}
        grid = []
        try:
            for subject in subjects:
                pred, keep = self._predict(model, subject)
                target, mask = subject.target, subject.mask
                if keep is not None:  # score the sampled slices only
                    axis = self.data.slice_axis
                    pred, target = np.compress(keep, pred, axis), np.compress(keep, target, axis)
                    mask = None if mask is None else np.compress(keep, mask, axis)
                    source = np.compress(keep, subject.source, 1 + axis)
                    subject = ValSubject(subject.id, source, target, mask)
                kwargs = {"mask": mask, "data_range": self.data.data_range}
                scores["psnr"].append(float(psnr(pred, target, **kwargs)))
                if keep is not None:  # a few scattered slices: 2D SSIM per slice, averaged
                    axis = self.data.slice_axis
                    slices = {k: None if v is None else np.moveaxis(v, axis, 0)
                              for k, v in (("pred", pred), ("ref", target), ("mask", mask))}
                    per_slice = ssim(slices["pred"], slices["ref"], mask=slices["mask"],
                                     data_range=self.data.data_range, batch=True)
                    scores["ssim"].append(float(np.nanmean(np.asarray(per_slice))))
                else:
                    scores["ssim"].append(float(ssim(pred, target, **kwargs)))
                scores["mae"].append(float(mae(pred, target, mask=mask)))
                if len(grid) < GRID_SUBJECTS:
                    grid.append(self._grid_row(subject, pred))
        finally:
            model.train()
        result = {k: float(np.mean(v)) for k, v in scores.items()}
        step, epoch = self.progress.step, self.progress.epoch
        log.scalars(step, epoch, {f"val/{k}": v for k, v in result.items()})
        self.progress.history.append({"step": step, **result})
        if self.config.logging.samples:
            figure = sample_grid(grid, f"{self.config.name or self.config.method.name} step {step}")
            log.figure("val/samples", figure, step)
            save_figure(figure, self.run_dir / "samples" / f"step_{step:07d}.png")
        value = result[self.config.validation.metric]
        better = self.config.validation.higher_is_better
        best = self.progress.best
        if best is None or (value > best if better else value < best):
            self.progress.best, self.progress.best_step = value, step
            self.save("best")
        return result

    def _grid_row(self, subject: ValSubject,
                  pred: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        axis = self.data.slice_axis
        index = subject.target.shape[axis] // 2
        return (subject.id, np.take(subject.source[0], index, axis=axis), np.take(pred, index, axis=axis),
                np.take(subject.target, index, axis=axis))

    # ----------------------------------------------------------------------------------- loop
    def fit(self, stop_after: int | None = None, time_limit: float | None = None) -> Path:
        """Run until ``total_steps`` (or ``stop_after`` steps of this session, or ``time_limit`` seconds
        of it: a wall-clock budget, then ``checkpoints/last`` as at the end); returns the run dir."""
        cfg = self.config
        p = self.progress
        # rows after the checkpoint (or, for a new run, from an earlier attempt that crashed) are dropped
        log = MetricLog(self.run_dir / "logs", cfg.logging.tensorboard, start_step=p.step)
        end = self.total_steps if stop_after is None else min(self.total_steps, p.step + stop_after)
        self.method.train()
        try:
            with _progress_bar(cfg.logging.progress, self.total_steps, p.step) as bar, \
                    _stop_on_interrupt() as interrupted:
                window_start, window_steps = time.perf_counter(), 0
                session_start = window_start
                batches = self.batches()
                while p.step < end:
                    losses = self.train_step(self._to_device(next(batches)))
                    p.step += 1
                    p.position += 1
                    window_steps += 1
                    now = time.perf_counter()
                    rate = window_steps * cfg.optim.batch_size / max(now - window_start, 1e-9)
                    bar.update(p.step, losses, rate)
                    out_of_time = time_limit is not None and now - session_start >= time_limit
                    stopping = p.step == end or interrupted.is_set() or out_of_time
                    if p.step % cfg.logging.every == 0 or stopping:
                        lrs = {f"lr/{g}": s.get_last_lr()[0] for g, s in self.schedulers.items()}
                        log.scalars(p.step, p.epoch, {**losses, **lrs, "samples_per_s": rate})
                        window_start, window_steps = now, 0
                    finished = p.step == self.total_steps
                    # a spent wall-clock budget ends the run as its last step would: validate, save
                    due = bool(cfg.validation.every) and p.step % cfg.validation.every == 0
                    if finished or out_of_time or due:
                        self.validate(log)
                    if finished or stopping or p.step % cfg.checkpoint.every == 0:
                        self.save("last")
                    if out_of_time:
                        break
                    if interrupted.is_set():
                        _console().print(f"interrupted after step {p.step}: checkpoints/last written; "
                                         f"continue with medtrans train --resume {self.run_dir}",
                                         markup=False, highlight=False)
                        raise KeyboardInterrupt(f"training interrupted after step {p.step}")
        finally:
            log.close()
        return self.run_dir


def _foreground_slices(subject: ValSubject, slice_axis: int, count: int) -> list[int]:
    """``count`` evenly spaced slice indices among those with foreground in the mask (all if none)."""
    total = subject.target.shape[slice_axis]
    if subject.mask is not None:
        other = tuple(a for a in range(subject.mask.ndim) if a != slice_axis)
        candidates = np.flatnonzero(subject.mask.any(axis=other))
    else:
        candidates = np.arange(total)
    if len(candidates) == 0:
        candidates = np.arange(total)
    if len(candidates) <= count:
        return [int(i) for i in candidates]
    picks = np.linspace(0, len(candidates) - 1, count).round().astype(int)
    return sorted({int(candidates[i]) for i in picks})


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def _stop_on_interrupt() -> Iterator[threading.Event]:
    """The first Ctrl-C (SIGINT) asks the loop to stop after the current step and write ``last``.

    A step interrupted half-way (after one group's update) could not be resumed exactly, so the
    signal only sets a flag; a second Ctrl-C interrupts at once as usual.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class _Bar:
    """A rich progress bar with losses, samples/s and ETA (a no-op when progress is off)."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def update(self, step: int, losses: dict[str, float], rate: float) -> None:
        if self._progress is not None:
            text = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
            self._progress.update(self._task, completed=step, losses=text, rate=f"{rate:.1f} samples/s")


@contextmanager
def _progress_bar(enabled: bool, total: int, start: int) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn(), TextColumn("{task.fields[losses]}")]
    with Progress(*columns, console=_console(), transient=False) as progress:
        task = progress.add_task("train", total=total, completed=start, losses="", rate="")
        yield _Bar(progress, task)


def prepare_run_dir(config: Config, run_dir: Path | None, resume: Path | None) -> tuple[Config, Path]:
    """The run folder and the config to use (paths made absolute); a resume keeps the training config."""
    config = config.with_absolute_paths()
    if not config.data.root.is_dir():
        raise MedtransError(config.data.root, "data.root is not a folder",
                            "set data.root (or --set data.root=DIR) to the dataset folder")
    if resume is not None:
        resume = Path(resume)
        saved = read_run_config(resume)
        differences = config.training_differences(saved)
        if differences:
            raise MedtransError(resume, f"the config differs from the run's in {', '.join(differences)}",
                                "resume with the run's config.yaml (only lengths, logging, validation, "
                                "checkpointing, device and data location may change)")
        if not (resume / "checkpoints" / "last" / ckpt.STATE_JSON).is_file():
            raise MedtransError(resume, "run has no checkpoints/last to resume from",
                                "start a new run instead (drop --resume)")
        dump_config(config, resume / CONFIG_FILE)
        return config, resume
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if (run_dir / "checkpoints").exists():
        raise MedtransError(run_dir, "already holds a trained run", "use --resume to continue it, or choose "
                            "another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / CONFIG_FILE)
    return config, run_dir


def train(config: Config, run_dir: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None, stop_after: int | None = None,
          time_limit: float | None = None) -> Path:
    """Train ``config`` into a run directory and return it.

    ``resume`` continues the run in that folder from ``checkpoints/last`` (``run_dir`` is then ignored);
    ``stop_after`` ends this session after that many steps (for time-limited jobs; resume later);
    ``time_limit`` after that many seconds of training. Ctrl-C stops after the current step, writes
    ``checkpoints/last`` and raises KeyboardInterrupt.
    """
    config, folder = prepare_run_dir(config, None if run_dir is None else Path(run_dir),
                                     None if resume is None else Path(resume))
    with deterministic_mode(config.deterministic):
        trainer = Trainer(config, folder, resume=resume is not None)
        return trainer.fit(stop_after=stop_after, time_limit=time_limit)
