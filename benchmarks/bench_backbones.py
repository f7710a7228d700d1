"""Training-step throughput, parameters and peak memory of every CNN / transformer / SSM backbone.

One step = forward, L1 loss, backward, Adam step, on random 1 → 1 channel images, each backbone with
its default options (what a recipe gets by naming it). Each (backbone, size) runs in its own
subprocess so its peak resident memory (``ru_maxrss``) is its own; the memory column is the peak
above a baseline subprocess that imports torch and builds the batch but no network. Printed: median
images/s of ``--repeats`` timed steps after ``--warmup``, and every figure as a ratio to ``unet``.
``--mode fast`` (default) is channels_last + bf16 autocast, the recipes' setting; ``fp32`` is eager.
Run: ``.venv/bin/python benchmarks/bench_backbones.py`` (a few minutes on 2 threads).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from medtrans.nets import build_backbone

NAMES = ("unet", "resnet", "resvit", "mamba")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(name: str, size: int, batch: int, mode: str, warmup: int, repeats: int, threads: int) -> dict:
    """Time ``repeats`` training steps of ``name`` in this process; ``name == "none"``: baseline only."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = torch.randn(batch, 1, size, size), torch.randn(batch, 1, size, size)
    if name == "none":
        return {"peak_mb": peak_mb()}
    net = build_backbone(name, spatial_dims=2, in_channels=1, out_channels=1)
    params = sum(p.numel() for p in net.parameters())
    fast = mode == "fast"
    if fast:
        net = net.to(memory_format=torch.channels_last)
        x, y = (v.contiguous(memory_format=torch.channels_last) for v in (x, y))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if fast else nullcontext():
            loss = F.l1_loss(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"params": params, "step_s": statistics.median(times), "peak_mb": peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=list(NAMES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 4], help="batch size per size")
    parser.add_argument("--mode", choices=("fast", "fp32"), default="fast")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("NAME", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, size, batch = args.one
        row = one(name, int(size), int(batch), args.mode, args.warmup, args.repeats, args.threads)
        print(json.dumps(row))
        return

    def run(name: str, size: int, batch: int) -> dict:
        cmd = [sys.executable, __file__, "--one", name, str(size), str(batch), "--mode", args.mode,
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    print(f"mode {args.mode}, {args.threads} threads, torch {torch.__version__}, median of {args.repeats} "
          f"steps after {args.warmup} warm-up; memory = peak RSS above a no-network baseline")
    print(f"{'size':>5} {'batch':>5} {'backbone':>8} {'M params':>9} {'img/s':>7} {'peak MB':>8}"
          f" {'params/unet':>11} {'speed/unet':>10} {'memory/unet':>11}")
    for size, batch in zip(args.sizes, args.batch, strict=True):
        base = run("none", size, batch)["peak_mb"]
        ref = None
        for name in args.names:  # unet first (the default): each row is printed as soon as it is measured
            row = run(name, size, batch)
            ref = row if name == "unet" else ref
            speed, memory = batch / row["step_s"], row["peak_mb"] - base
            ratios = ("", "", "") if ref is None else (
                f"{row['params'] / ref['params']:.2f}x", f"{ref['step_s'] / row['step_s']:.2f}x",
                f"{memory / (ref['peak_mb'] - base):.2f}x")
            print(f"{size:>5} {batch:>5} {name:>8} {row['params'] / 1e6:>9.2f} {speed:>7.2f} {memory:>8.0f}"
                  f" {ratios[0]:>11} {ratios[1]:>10} {ratios[2]:>11}", flush=True)


if __name__ == "__main__":
    main()
