"""Sampler throughput against the training step rate of a small U-Net, measured in the same run.

A 4-subject brain phantom (128×128×96, T1 → T2) is prepared into the ``.npy`` cache; then, single
process: (a) 2D slices (128²) and 3D patches (64³) per second from the samplers, drawn through a
``DataLoader`` (batch 8 / 2, ``num_workers=0``); (b) images (patches) per second of a training step
(forward, L1, backward, Adam; eager fp32) of ``BACKBONES.get("unet")`` with depth 3, width 16, on the
same batch shapes. Printed: medians of ``--repeats`` and the ratio sampler / training (goal ≥ 5).
Run: ``.venv/bin/python benchmarks/bench_sampler.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medtrans.data.layouts import open_dataset
from medtrans.data.phantom import PhantomSpec, write_phantom
from medtrans.data.plan import make_plan
from medtrans.data.prepare import PreparedCache
from medtrans.data.samplers import make_sampler
from medtrans.registry import BACKBONES


def sampler_rate(sampler, batch: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(sampler, batch_size=batch, num_workers=0)
    it = iter(loader)
    next(it)  # warm the memory maps
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - start)


def train_rate(dims: int, batch: dict, steps: int) -> float:
    torch.manual_seed(0)
    net = BACKBONES.get("unet")(dims, batch["source"].shape[1], 1, depth=3, width=16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        loss = F.l1_loss(net(batch["source"]), batch["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return len(batch["source"]) * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_sampler_"))
    spec = PhantomSpec(anatomy="brain", size=(128, 128, 96), modalities=("t1", "t2"), seed=0)
    write_phantom(work / "data", spec, 4, workers=2)
    ds = open_dataset(work / "data")
    rows = []
    for mode, patch, batch, batches, steps in (("2d", (128, 128), 8, 40, 3), ("3d", (64, 64, 64), 2, 10, 2)):
        plan = make_plan(ds, ["t1"], "t2", dims=mode, patch_size=list(patch))
        cache = PreparedCache(ds, plan, work / "cache")
        sampler = make_sampler(cache, ds.ids, mode=mode, samples_per_epoch=batch * (batches + 1) * 4)
        first = next(iter(torch.utils.data.DataLoader(sampler, batch_size=batch)))
        s_rates, t_rates = [], []
        for r in range(args.repeats):
            sampler.set_epoch(r)
            s_rates.append(sampler_rate(sampler, batch, batches))
            t_rates.append(train_rate(2 if mode == "2d" else 3, first, steps))
        s, t = statistics.median(s_rates), statistics.median(t_rates)
        rows.append((mode, patch, batch, s, t))
    print(f"sampler vs U-Net (depth 3, width 16, fp32) training step, median of {args.repeats}, 2 threads")
    for mode, patch, batch, s, t in rows:
        print(f"  {mode} {'x'.join(map(str, patch)):>9} batch {batch}: sampler {s:9.1f} samples/s   "
              f"train {t:7.2f} samples/s   ratio {s / t:8.1f}  (goal >= 5)")


if __name__ == "__main__":
    main()
