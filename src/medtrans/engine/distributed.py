"""Several processes, one run: what the trainer and the predictor need to run under ``torchrun``.

``torchrun`` (or ``medtrans train --nproc N``) starts one process per device and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; a single process is world size 1 and every helper here is then a
no-op, so the one-process path is unchanged.

Gradients are averaged by hand after each group's backward (``sync_gradients``), not by wrapping the
method in ``DistributedDataParallel``: methods are trained through ``losses(batch, group, step)``
with the other groups frozen, several backwards per step and parameters unused by some groups, which
DDP's forward/backward hooks only follow with ``find_unused_parameters`` and re-registration when
``requires_grad`` changes. One bucketed all-reduce of the group's gradients after its backward gives
the gradient of the global batch mean for any method, at the cost of not overlapping communication
with the backward (docs/SCALING.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from medtrans.errors import MedtransError

T = TypeVar("T")

#: gradients are all-reduced in flat buckets of at most this many bytes (DDP's default is 25 MB)
BUCKET_BYTES = 25 * 2**20
#: how long a rank waits in a collective (e.g. while rank 0 validates) before giving up
TIMEOUT = timedelta(minutes=60)


def launched() -> bool:
    """True inside a process started by torchrun with more than one process in the job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes the run folder (config, logs, samples, checkpoints)."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA device in a launched job (one device per process), else ``device``."""
    if launched() and device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


def init(device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) when launched; returns this rank's device."""
    if not launched():
        return device
    device = rank_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def main_first(build: Callable[[bool], T]) -> T:
    """``build(True)`` on rank 0, then ``build(False)`` on the others (which read what rank 0 wrote)."""
    if is_main():
        result = build(True)
        barrier()
        return result
    barrier()
    return build(False)


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank (e.g. the run folder, whose default name holds a time stamp)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on one (so all ranks stop after the same step)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def per_rank_batch(batch_size: int, world: int | None = None) -> int:
    """The share of the global ``optim.batch_size`` one of ``world`` (default: this job's) ranks computes."""
    world = world or world_size()
    if batch_size % world:
        raise MedtransError(None, f"optim.batch_size {batch_size} is not divisible by the {world} processes",
                            f"set optim.batch_size to a multiple of {world} (it is the global batch)")
    return batch_size // world


def shard_indices(first_step: int, steps: int, batch_size: int) -> list[int]:
    """This rank's sampler indices for global batches ``first_step`` … ``steps - 1`` of an epoch.

    Global batch ``s`` is items ``s·B … s·B + B - 1`` (as in one process); rank ``r`` takes the
    ``r``-th slice of ``B / world`` of each, so the ranks' batches side by side are the global batch.
    """
    share, offset = per_rank_batch(batch_size), rank() * (batch_size // world_size())
    return [s * batch_size + offset + i for s in range(first_step, steps) for i in range(share)]


def shard(items: Sequence[object]) -> list[object]:
    """Every ``world``-th item from this rank's: disjoint subsets whose union is ``items``."""
    return list(items[rank()::world_size()])


def seed_step(seed: int, step: int) -> None:
    """Reseed torch from (seed, rank, step) before a step when several ranks train.

    Each rank must draw different noise (dropout, diffusion noise and times) for its share of the
    batch, and a resumed run must draw what the uninterrupted run drew; a seed that is a function of
    (seed, rank, step) gives both without storing every rank's generator state in the checkpoint.
    """
    if world_size() > 1:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank(), step]).generate_state(1)[0]))


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (as DDP does at construction)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def sync_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks, in flat buckets (one all-reduce each).

    Parameters without a gradient are skipped; every rank runs the same method code on the same
    group, so every rank skips the same ones.
    """
    if not dist.is_initialized():
        return
    world = dist.get_world_size()
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat /= world
        for grad, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
            grad.copy_(synced)


def _buckets(tensors: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive runs of tensors of one dtype and device, each at most ``BUCKET_BYTES``."""
    buckets: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        last = buckets[-1] if buckets else None
        fits = last is not None and (last[0].dtype, last[0].device) == (t.dtype, t.device)
        if not fits or size + nbytes > BUCKET_BYTES:
            buckets.append([t])
            size = nbytes
        else:
            buckets[-1].append(t)
            size += nbytes
    return buckets


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each logged value over the ranks (the loss of the global batch for mean losses)."""
    if not dist.is_initialized() or not values:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(values, stacked.tolist(), strict=True))


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launch(nproc: int, argv: Sequence[str], option: str = "--nproc") -> int:
    """Run this command line again under ``torchrun --standalone`` with ``nproc`` processes.

    ``argv`` is the command line after the program name; ``option`` and its value are dropped from
    it. Returns torchrun's exit code (non-zero when a rank failed; torchrun names the rank).
    """
    import subprocess

    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "medtrans", *args]
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, stated so it does not warn
    return subprocess.run(command, env=env).returncode


def finish(code: int = 0) -> None:
    """End a launched process: leave the process group, then exit at once with ``code``.

    With gloo about one exit in ten aborts in the destructors ("terminate called without an active
    exception", exit 134) after a good run; ``destroy_process_group`` then ``os._exit`` skips them.
    A single process returns and exits normally.
    """
    if not launched():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(code)
