"""SSIM speed and agreement: medtrans.metrics.structural against scikit-image on the same inputs, in one run.

Cases:
- masked 3D SSIM on a 256^3 CT-like volume (SynthRAD convention: uniform 7^3 window, sample
  covariance, data_range 4024, mean of the map inside a body mask after a 3-voxel crop);
- the same without a mask (whole valid interior);
- 2D SSIM of a batch of 100 slices 256^2 (Gaussian sigma 1.5, population covariance), one batched call
  against scikit-image looping over the slices.

The machine is shared, so each timing is the median of interleaved repeats (reference, ours, reference,
ours …). Run: ``.venv/bin/python benchmarks/bench_ssim.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from skimage.metrics import structural_similarity

from medtrans.metrics import ssim, structural

WANG = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def _volume(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:n, :n, :n]
    body = ((z - n / 2) / (0.39 * n)) ** 2 + ((y - n / 2) / (0.35 * n)) ** 2 + (
        (x - n / 2) / (0.43 * n)
    ) ** 2 < 1
    bone = ((z - n / 2) / (0.1 * n)) ** 2 + ((y - n / 2) / (0.1 * n)) ** 2 + (
        (x - n / 2) / (0.2 * n)
    ) ** 2 < 1
    ref = np.where(body, 40.0, -1000.0) + np.where(bone, 900.0, 0.0) + rng.normal(0, 20, (n, n, n))
    pred = ref + rng.normal(0, 60, (n, n, n))
    return pred + 1024.0, ref + 1024.0, body


def _time(fn, repeats: int) -> tuple[list[float], object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return times, value


def _list(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.3f}" for t in times) + "]"


def _compare(name: str, reference, ours, repeats: int) -> None:
    ref_times, our_times = [], []
    ref_value = our_value = None
    for _ in range(repeats):  # interleaved so both see the same machine load
        t, ref_value = _time(reference, 1)
        ref_times += t
        t, our_value = _time(ours, 1)
        our_times += t
    ref_med, our_med = statistics.median(ref_times), statistics.median(our_times)
    diff = float(np.max(np.abs(np.asarray(ref_value) - np.asarray(our_value))))
    print(
        f"{name}: scikit-image {ref_med:.3f} s, medtrans {our_med:.3f} s, ratio {ref_med / our_med:.1f}x, "
        f"max |difference| {diff:.2e} (medians of {repeats}; all ref {_list(ref_times)}, "
        f"all ours {_list(our_times)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--slices", type=int, default=100)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}; medtrans SSIM runs {structural._CPU_WORKERS} single-threaded slab "
        f"stream(s) on {os.cpu_count()} cores; scikit-image is single-threaded"
    )

    pred, ref, body = _volume(args.size, 0)
    print(f"volume {args.size}^3, mask covers {body.mean():.1%} of voxels")

    def sk_masked() -> float:
        _, smap = structural_similarity(ref, pred, data_range=4024.0, full=True)
        return float(smap[3:-3, 3:-3, 3:-3][body[3:-3, 3:-3, 3:-3]].mean())

    _compare("masked 3D SSIM", sk_masked, lambda: ssim(pred, ref, data_range=4024.0, mask=body), args.repeats)
    _compare(
        "unmasked 3D SSIM",
        lambda: structural_similarity(ref, pred, data_range=4024.0),
        lambda: ssim(pred, ref, data_range=4024.0),
        args.repeats,
    )

    stack_pred, stack_ref = pred[: args.slices], ref[: args.slices]

    def sk_loop() -> np.ndarray:
        return np.array(
            [
                structural_similarity(stack_ref[i], stack_pred[i], data_range=4024.0, **WANG)
                for i in range(args.slices)
            ]
        )

    _compare(
        f"2D SSIM, {args.slices} slices {args.size}^2 (Gaussian)",
        sk_loop,
        lambda: ssim(stack_pred, stack_ref, data_range=4024.0, batch=True, **WANG),
        max(args.repeats, 5),
    )


if __name__ == "__main__":
    main()
