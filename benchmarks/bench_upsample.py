"""Decoder upsampling, ``transpose`` vs ``resize``: checkerboard power, accuracy and step time, same run.

For ``unet`` and ``resnet`` at the phantom recipes' widths: train each mode from the same seed on
T1 → T2 slices of the simulated brain (L1, Adam, channels_last, bf16 autocast where native as the
recipes' amp: auto), then
on held-out subjects report PSNR, the Nyquist fraction of the prediction over the target's
(``metrics.spectral.nyquist_fraction``; > 1 means more 2-pixel-period power than the truth: a
checkerboard) and the median training step time, each as resize / transpose.
Run: ``.venv/bin/python benchmarks/bench_upsample.py`` (a few minutes on 2 threads).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from medtrans.data.phantom import PhantomSpec, simulate
from medtrans.engine.predictor import resolve_amp
from medtrans.metrics import psnr
from medtrans.metrics.spectral import nyquist_fraction
from medtrans.nets import build_backbone

SPECS = {"unet": {"depth": 3, "width": 16}, "resnet": {"width": 16, "n_blocks": 6}}


def slices(first: int, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T1, T2) slices in [0, 1] (each divided by its subject's T2 / T1 maximum)."""
    spec = PhantomSpec(size=(size, size, 1), modalities=("t1", "t2"), seed=0)
    images = [simulate(spec, i).images for i in range(first, first + count)]
    t1, t2 = (torch.from_numpy(np.stack([im[m][..., 0] for im in images]).astype(np.float32))[:, None]
              for m in ("t1", "t2"))
    return t1 / t1.amax((2, 3), keepdim=True), t2 / t2.amax((2, 3), keepdim=True)


def train(
    name: str, mode: str, data: tuple, steps: int, batch: int, seed: int,
) -> tuple[torch.nn.Module, float]:
    """The trained net and its median step seconds."""
    source, target = data
    torch.manual_seed(seed)
    net = build_backbone({"name": name, **SPECS[name], "upsample": mode}, 2, 1, 1)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(steps):
        pick = torch.randint(len(source), (batch,), generator=g)
        start = time.perf_counter()
        # the recipes' amp: auto: bf16 only where the CPU computes it natively (else it is emulated, slower)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve_amp("auto", torch.device("cpu"))):
            x = source[pick].contiguous(memory_format=torch.channels_last)
            loss = F.l1_loss(net(x).float(), target[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return net.eval(), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-subjects", type=int, default=24)
    parser.add_argument("--test-subjects", type=int, default=6)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = slices(0, args.train_subjects, args.size)
    test_source, test_target = slices(1000, args.test_subjects, args.size)
    target_nyquist = nyquist_fraction(test_target)
    print(f"{args.size}² slices, {args.train_subjects} train / {args.test_subjects} test subjects, "
          f"{args.steps} steps batch {args.batch}, seed {args.seed}, {args.threads} threads; "
          "Nyquist = prediction's / target's")
    print(f"{'backbone':>8} {'upsample':>9} {'PSNR dB':>8} {'Nyquist':>8} {'step s':>7}")
    for name in SPECS:
        rows = {}
        for mode in ("transpose", "resize"):
            net, step_s = train(name, mode, data, args.steps, args.batch, args.seed)
            with torch.no_grad():
                pred = net(test_source)
            score, checker = psnr(pred, test_target, data_range=1.0), nyquist_fraction(pred) / target_nyquist
            rows[mode] = (score, checker, step_s)
            print(f"{name:>8} {mode:>9} {score:>8.2f} {checker:>8.3f} {step_s:>7.3f}", flush=True)
        (p_t, n_t, s_t), (p_r, n_r, s_r) = rows["transpose"], rows["resize"]
        print(f"{name:>8} {'r - t':>9} {p_r - p_t:>+8.2f} {n_r / n_t:>7.2f}x {s_r / s_t:>6.2f}x")


if __name__ == "__main__":
    main()
