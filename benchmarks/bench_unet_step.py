"""U-Net training step on CPU: channels_last + bf16 autocast against eager fp32, same net, same run.

One step = forward, L1 loss, backward, Adam step. Both modes start from the same initial weights; their
timed steps alternate (so a load change on the shared machine hits both alike) and each figure is the
median of the repeats after warm-up, printed as images/s and as the ratio fast / reference.
Run: ``.venv/bin/python benchmarks/bench_unet_step.py`` (about a minute on 2 threads).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from medtrans.nets import build_backbone


def make_step(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fast: bool
) -> Callable[[], tuple[float, float]]:
    """A closure running one training step on its own copy of ``net``; returns (wall s, CPU s).

    ``fast``: weights and batch in channels_last, forward under bf16 autocast (the loss in fp32).
    """
    net = copy.deepcopy(net)
    if fast:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16) if fast else nullcontext():
            loss = F.l1_loss(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start, time.process_time() - cpu

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 4], help="batch size per size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--norm", default="instance")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = {"name": "unet", "width": args.width, "depth": args.depth, "norm": args.norm}
    net = build_backbone(spec, spatial_dims=2, in_channels=1, out_channels=1)
    millions = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"unet {spec}, {millions:.2f} M parameters, {args.threads} threads, torch {torch.__version__}")
    print(f"median of {args.repeats} steps after {args.warmup} warm-up, fp32 and fast steps alternating;")
    print("CPU s = process CPU time per step (less sensitive than wall time to other jobs on the machine)")
    print(
        f"{'size':>5} {'batch':>5} {'fp32 img/s':>11} {'cl+bf16 img/s':>14} {'ratio':>6}"
        f" {'fp32 CPU s':>11} {'cl+bf16 CPU s':>14} {'ratio':>6}"
    )
    for size, batch in zip(args.sizes, args.batch, strict=True):
        x = torch.randn(batch, 1, size, size)
        y = torch.randn(batch, 1, size, size)
        ref, fast = make_step(net, x, y, fast=False), make_step(net, x, y, fast=True)
        runs: dict[str, list[tuple[float, float]]] = {"ref": [], "fast": []}
        for i in range(args.warmup + args.repeats):
            t_ref, t_fast = ref(), fast()
            if i >= args.warmup:
                runs["ref"].append(t_ref)
                runs["fast"].append(t_fast)
        (wall_ref, cpu_ref), (wall_fast, cpu_fast) = (
            [statistics.median(t[k] for t in runs[mode]) for k in (0, 1)] for mode in ("ref", "fast")
        )
        print(
            f"{size:>5} {batch:>5} {batch / wall_ref:>11.2f} {batch / wall_fast:>14.2f}"
            f" {wall_ref / wall_fast:>5.2f}x"
            f" {cpu_ref:>11.2f} {cpu_fast:>14.2f} {cpu_ref / cpu_fast:>5.2f}x"
        )


if __name__ == "__main__":
    main()
