"""Quality against sampling steps for ddpm and flow, against regression trained with the same budget.

One run: simulate a brain phantom (T1, T2), train ``regression``, ``ddpm`` and ``flow`` from their
recipes with the same steps, batch and U-Net, then translate the test subjects at several step
counts, with one sample and with the mean of 8, scoring PSNR / SSIM inside the brain (default
preset) against the acquired T2 and, where the phantom wrote it, the noise- and bias-free T2
(``truth/t2``). Also: seconds per volume (and per network evaluation) as a ratio to regression's one
pass, and the calibration of the 8-sample std maps (Spearman, AUSE, RMSE/RMS-std).

    .venv/bin/python benchmarks/bench_sampling_steps.py [--train-steps 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ("regression", "ddpm", "flow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subjects", type=int, default=14)
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10, 20, 50])
    parser.add_argument("--mean-steps", type=int, nargs="+", default=[1, 4, 10, 20])
    parser.add_argument("--ddpm-reference", action="store_true", help="also 1000-step DDPM, 1 sample")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from medtrans.config import load_config
    from medtrans.data.phantom import PhantomSpec, write_phantom
    from medtrans.demo import brain_mask
    from medtrans.engine.predictor import Predictor
    from medtrans.engine.trainer import train
    from medtrans.io import load
    from medtrans.metrics.presets import evaluate_pair
    from medtrans.metrics.uncertainty import calibration

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phantom"
        write_phantom(root, PhantomSpec(anatomy="brain", size=tuple(args.size), modalities=("t1", "t2"),
                                        seed=0), subjects=args.subjects)
        runs = {}
        for name in METHODS:
            config = load_config(REPO / "configs" / f"phantom_t1_t2_{name}.yaml", [
                f"data.root={root}", f"runs_dir={tmp}/runs", f"optim.steps={args.train_steps}",
                "device=cpu", "logging.progress=false", "logging.tensorboard=false",
                "backbone.args={depth: 3, width: 16, norm: group}" if name == "regression" else
                "backbone.args={depth: 3, width: 16, norm: group, time_dim: 64}",
                f"validation.every={args.train_steps}", f"checkpoint.every={args.train_steps}"])
            start = time.perf_counter()
            runs[name] = train(config, run_dir=Path(tmp) / "runs" / name)
            print(f"trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
        test = json.loads((runs["regression"] / "splits.json").read_text())["test"]

        def score(name: str, steps: int | None, samples: int) -> dict:
            predictor = Predictor.from_run(runs[name], which="last", device="cpu", steps=steps,
                                           samples=samples, seed=0)
            acquired, truth, cal, seconds = [], [], [], 0.0
            for sid in test:
                folder = root / sid
                t1 = load(folder / "t1.nii.gz", modality="t1")
                mask = brain_mask(load(folder / "labels.nii.gz").array)
                start = time.perf_counter()
                pred, std = predictor.predict_subject_with_std({"t1": t1})
                seconds += time.perf_counter() - start
                acquired.append(evaluate_pair(pred.array, load(folder / "t2.nii.gz").array, mask))
                truth_file = folder / "truth" / "t2.nii.gz"
                if truth_file.is_file():
                    truth.append(evaluate_pair(pred.array, load(truth_file).array, mask))
                if std is not None:
                    cal.append(calibration(pred.array, load(folder / "t2.nii.gz").array, std.array, mask))

            def mean(values: list[dict], key: str) -> float | None:
                return float(np.mean([v[key] for v in values])) if values else None

            row = {"method": name, "steps": steps, "samples": samples,
                   "psnr": mean(acquired, "psnr"), "ssim": mean(acquired, "ssim"),
                   "psnr_truth": mean(truth, "psnr"), "ssim_truth": mean(truth, "ssim"),
                   "s_per_volume": seconds / len(test),
                   "evaluations": predictor.method.evaluations(steps) * samples}
            for key in ("std_spearman", "std_ause", "std_ratio"):
                row[key] = mean(cal, key)
            print(json.dumps(row), flush=True)
            return row

        rows.append(score("regression", None, 1))
        for name in ("ddpm", "flow"):
            for steps in args.steps:
                rows.append(score(name, steps, 1))
            for steps in args.mean_steps:
                rows.append(score(name, steps, 8))
        if args.ddpm_reference:
            rows.append(score("ddpm", 1000, 1))

    base = rows[0]["s_per_volume"]
    print(f"\n{'method':<11}{'steps':>6}{'N':>3}{'PSNR':>8}{'SSIM':>7}{'PSNR*':>8}{'SSIM*':>7}"
          f"{'s/vol':>8}{'×reg':>7}{'rho':>6}{'AUSE':>6}{'ratio':>7}")
    def f(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if r[key] is not None else "-"

    for r in rows:
        print(f"{r['method']:<11}{str(r['steps'] or '-'):>6}{r['samples']:>3}{f(r, 'psnr', '8.2f')}"
              f"{f(r, 'ssim', '7.3f')}{f(r, 'psnr_truth', '8.2f')}{f(r, 'ssim_truth', '7.3f')}"
              f"{r['s_per_volume']:8.2f}{r['s_per_volume'] / base:7.1f}{f(r, 'std_spearman', '6.2f')}"
              f"{f(r, 'std_ause', '6.2f')}{f(r, 'std_ratio', '7.2f')}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
