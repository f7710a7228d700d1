"""Training throughput with 1 and 2 processes (torchrun, gloo, 1 thread each) at the same global batch.

The T1→T2 recipe (``configs/phantom_t1_t2_regression.yaml``: 2D U-Net depth 3 width 16, global batch 8)
on a small brain phantom, in fp32 unless ``--amp`` (the recipe's bf16 autocast + channels-last, slow
where the CPU has no native bf16); each run is ``torchrun --standalone
--nproc_per_node N -m medtrans train`` and its samples/s are the trainer's own ``samples_per_s`` log rows
(global samples per second), the first window (warm-up) left out. Runs alternate 1, 2, 1, 2 … so load
from other processes hits both alike; medians over runs and windows. The reference is 1 process.

    .venv/bin/python benchmarks/bench_ddp.py [--repeats 2] [--steps 60] [--size 96 96 24] [--amp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, nargs=3, default=[96, 96, 24])
    parser.add_argument("--amp", action="store_true", help="keep the recipe's bf16 autocast + channels-last")
    args = parser.parse_args()

    from medtrans.data.phantom import PhantomSpec, write_phantom
    from medtrans.engine.runlog import read_metrics

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_phantom(Path(tmp) / "phantom", PhantomSpec(anatomy="brain", size=tuple(args.size),
                                                                 modalities=("t1", "t2"), seed=0), subjects=6)
        for repeat in range(args.repeats):
            for nproc in (1, 2):
                run_dir = Path(tmp) / f"run-{nproc}-{repeat}"
                command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "medtrans", "train",
                           str(REPO / "configs" / "phantom_t1_t2_regression.yaml"), "--run-dir", str(run_dir),
                           "--set", f"data.root={root}", "--set", f"optim.steps={args.steps}",
                           "--set", "logging.every=10", "--set", "logging.progress=false",
                           "--set", "validation.max_subjects=1", "--set", "device=cpu",
                           "--set", f"data.cache_dir={Path(tmp) / 'cache'}"]
                if not args.amp:
                    command += ["--set", "optim.amp=false", "--set", "optim.channels_last=false"]
                subprocess.run(command, env=env, check=True, capture_output=True)
                rows = [r["value"] for r in read_metrics(run_dir / "logs" / "metrics.csv")
                        if r["name"] == "samples_per_s"]
                rates[nproc].extend(rows[1:])
    median = {n: statistics.median(r) for n, r in rates.items()}
    print("samples/s per window:", {n: [round(x, 1) for x in r] for n, r in rates.items()})
    print(f"phantom {tuple(args.size)}, global batch 8, {args.steps} steps, 1 thread per process, "
          f"{'bf16 + channels-last' if args.amp else 'fp32'}")
    print(f"{'processes':>10}{'samples/s':>11}{'× 1 process':>13}")
    for n, rate in median.items():
        print(f"{n:>10}{rate:11.1f}{rate / median[1]:13.2f}")


if __name__ == "__main__":
    main()
