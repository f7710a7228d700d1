"""Quality against sampling steps, from the runs a ``medtrans benchmark`` already trained.

No training: every ENTRY of the benchmark folder OUT (e.g. ``runs/benchmark_families``) predicts the
benchmark's test subjects at each of ``--steps`` (and at its training step count with ``--full``),
one sample, seed 0, and is scored by the harness's own evaluator (same preset, same masks). The
reference, ``regression`` from the same folder, is predicted in the same run, so the seconds-per-
volume ratio compares like with like on a shared machine. A step count a preset cannot take (SelfRDB
cannot skip steps) is skipped with its reason.
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_steps_on_runs.py runs/benchmark_families
bridge-i2sb bridge-bbdm bridge-selfrdb --steps 1 2 4 10 --full``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from medtrans.engine.benchmark import BenchmarkSpec, load_spec
from medtrans.engine.evaluator import evaluate
from medtrans.engine.predictor import Predictor
from medtrans.errors import MedtransError


def score(run: Path, spec: BenchmarkSpec, test: list[str], steps: int | None, out: Path) -> dict:
    predictor = Predictor.from_run(run, which="last", device="cpu", steps=steps, samples=1, seed=0)
    start = time.perf_counter()
    predictor.predict_paths([spec.data.root / s for s in test], out)
    seconds = (time.perf_counter() - start) / len(test)
    result = evaluate(out, spec.data.root, mask=spec.data.mask, preset=spec.preset)
    rows = list(result.per_subject.values())
    means = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "truth_psnr") if k in rows[0]}
    return {"entry": run.name, "steps": steps, "s_per_volume": seconds, **means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a medtrans benchmark output folder")
    parser.add_argument("entries", nargs="+")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--full", action="store_true", help="also each entry's training step count")
    parser.add_argument("--reference", default="regression")
    args = parser.parse_args()

    spec, _ = load_spec(json.loads((args.out / "harness.json").read_text())["spec"])
    test = json.loads((args.out / "splits.json").read_text())["test"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(score(args.out / "runs" / args.reference, spec, test, None, Path(tmp) / "ref"))
        print(json.dumps(rows[-1]), flush=True)
        for entry in args.entries:
            run = args.out / "runs" / entry
            counts: list[int] = list(args.steps)
            if args.full:
                from medtrans.engine.run import load_trained

                method, _, _ = load_trained(run, which="last")
                counts.append(int(method.schedule.timesteps))  # the bridges' and DDPM's training count
            for steps in dict.fromkeys(c for c in counts if c > 0):
                try:
                    rows.append(score(run, spec, test, steps, Path(tmp) / f"{entry}_{steps}"))
                except MedtransError as err:
                    print(f"{entry} at {steps} steps: skipped ({err})", flush=True)
                    continue
                print(json.dumps(rows[-1]), flush=True)
    ref = rows[0]
    print(f"\n{'entry':<16}{'steps':>6}{'PSNR':>8}{'ΔPSNR':>8}{'SSIM':>7}{'PSNR*':>8}{'s/vol':>8}{'×ref':>7}")
    for r in rows:
        print(f"{r['entry']:<16}{str(r['steps'] or '-'):>6}{r['psnr']:8.2f}{r['psnr'] - ref['psnr']:+8.2f}"
              f"{r['ssim']:7.3f}{r.get('truth_psnr', float('nan')):8.2f}{r['s_per_volume']:8.2f}"
              f"{r['s_per_volume'] / ref['s_per_volume']:7.1f}")
    print("PSNR*: against the noise-free truth; ×ref: seconds per volume over the reference's, same run")


if __name__ == "__main__":
    main()
