"""U-Net training step on CPU: channels_last + bf16 autocast against eager fp32, same net, same run.

One step = forward, L1 loss, backward, Adam step. Each mode gets its own copy of the same initial
weights; the figure is the median of timed repeats after warm-up, printed as images/s and as the ratio
fast / reference. Run: ``.venv/bin/python benchmarks/bench_unet_step.py`` (about 2–3 minutes, 2 threads).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from medtrans.nets import build_backbone


def step_time(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fast: bool, warmup: int, repeats: int
) -> float:
    """Median seconds of one training step; ``fast`` = channels_last + bf16 autocast."""
    net = copy.deepcopy(net)
    if fast:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if fast else nullcontext()
        with ctx:
            loss = F.l1_loss(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 4], help="batch per size")
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
    print(
        f"unet {spec}, {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, "
        f"{args.threads} threads, torch {torch.__version__}"
    )
    print(f"{'size':>5} {'batch':>5} {'fp32 img/s':>11} {'cl+bf16 img/s':>14} {'ratio':>6}")
    for size, batch in zip(args.sizes, args.batch, strict=True):
        x = torch.randn(batch, 1, size, size)
        y = torch.randn(batch, 1, size, size)
        ref = step_time(net, x, y, False, args.warmup, args.repeats)
        fast = step_time(net, x, y, True, args.warmup, args.repeats)
        print(f"{size:>5} {batch:>5} {batch / ref:>11.2f} {batch / fast:>14.2f} {ref / fast:>5.2f}x")


if __name__ == "__main__":
    main()
