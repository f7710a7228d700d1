"""Bridge quality against sampling steps, with `regression` trained on the same budget as the reference.

A small brain phantom (``--subjects`` of ``--size``, T1 → T2, splits 0.5 / 0.25 / 0.25) is written;
``regression`` and ``bridge`` with each preset are trained ``--train-steps`` steps with the same
U-Net (depth 2, width 8), batch 8, lr 1e-3 cosine, EMA 0.999, fp32 on the CPU, no validation. Then
each bridge predicts the test volumes (EMA weights, seed 0) with 1, 2, 4, 10 steps and its training
count (SelfRDB cannot skip steps: 10 only), one sample. Printed per row: PSNR / SSIM (default preset,
whole volume, T2 units), their difference to regression, and the seconds per volume as a ratio to
regression's. Run: ``.venv/bin/python benchmarks/bench_bridge_steps.py`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medtrans.config import validate_config
from medtrans.data.phantom import PhantomSpec, write_phantom
from medtrans.engine.predictor import Predictor
from medtrans.engine.run import load_trained
from medtrans.engine.trainer import train
from medtrans.io import load
from medtrans.metrics.presets import evaluate_pair

METHODS = {
    "regression": {"name": "regression", "args": {"loss": "l1"}},
    "bridge selfrdb": {"name": "bridge", "args": {"preset": "selfrdb"}},
    "bridge i2sb": {"name": "bridge", "args": {"preset": "i2sb"}},
    "bridge bbdm": {"name": "bridge", "args": {"preset": "bbdm"}},
}


def train_run(data: Path, runs: Path, label: str, method: dict, steps: int) -> Path:
    raw = {
        "name": label.replace(" ", "_"), "data": {"root": str(data), "sources": ["t1"], "target": "t2",
                                                  "dims": "2d", "splits": {"train": 0.5, "val": 0.25,
                                                                           "test": 0.25}},
        "backbone": {"name": "unet", "args": {"depth": 2, "width": 8, "norm": "instance"}},
        "method": method, "device": "cpu", "seed": 0,
        "optim": {"steps": steps, "batch_size": 8, "lr": 1.0e-3, "schedule": "cosine", "ema": 0.999,
                  "amp": False},
        "logging": {"every": 50, "progress": False, "tensorboard": False},
        "validation": {"every": None}, "checkpoint": {"every": steps},
    }
    return train(validate_config(raw), run_dir=runs / raw["name"])


def score(run: Path, data: Path, subjects: list[str], steps: int | None) -> tuple[float, float, float]:
    """(mean PSNR, mean SSIM, median seconds per volume) over the test subjects."""
    predictor = Predictor.from_run(run, which="last", device="cpu", steps=steps, samples=1, seed=0)
    psnr, ssim, seconds = [], [], []
    for s in subjects:
        t1, t2 = load(data / s / "t1.nii.gz"), load(data / s / "t2.nii.gz")
        start = time.perf_counter()
        out = predictor.predict_subject({"t1": t1})
        seconds.append(time.perf_counter() - start)
        metrics = evaluate_pair(out.array, t2.array, load(data / s / "mask.nii.gz").array)
        psnr.append(metrics["psnr"])
        ssim.append(metrics["ssim"])
    return statistics.mean(psnr), statistics.mean(ssim), statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--size", default="64x64x16")
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_bridge_"))
    size = tuple(int(v) for v in args.size.split("x"))
    try:
        data = write_phantom(work / "data", PhantomSpec(anatomy="brain", size=size, modalities=("t1", "t2"),
                                                        seed=0), args.subjects)
        rows, reference = [], None
        for label, method in METHODS.items():
            start = time.perf_counter()
            run = train_run(data, work / "runs", label, method, args.train_steps)
            trained_s = time.perf_counter() - start
            subjects = json.loads((run / "splits.json").read_text())["test"]
            if label == "regression":
                reference = score(run, data, subjects, None)
                rows.append((label, "1 pass", *reference, trained_s))
                continue
            schedule = load_trained(run, which="last")[0].schedule
            counts = [10] if not schedule.skips else [1, 2, 4, 10, schedule.timesteps]
            for steps in counts:
                rows.append((label, str(steps), *score(run, data, subjects, steps), trained_s))
                print(f"{label}: {steps} steps done ({time.perf_counter() - start:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref_psnr, ref_ssim, ref_s = reference
    print(f"{args.subjects} subjects {args.size}, {args.train_steps} training steps each, test "
          f"{len(subjects)} volumes, 1 sample, 2 threads")
    print("| method | steps | PSNR dB | Δ PSNR vs regression | SSIM | Δ SSIM | s / volume | × regression "
          "| train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, steps, psnr, ssim, seconds, trained_s in rows:
        print(f"| {label} | {steps} | {psnr:.2f} | {psnr - ref_psnr:+.2f} | {ssim:.4f} "
              f"| {ssim - ref_ssim:+.4f} | {seconds:.2f} | {seconds / ref_s:.1f}× | {trained_s:.0f} |")


if __name__ == "__main__":
    main()
