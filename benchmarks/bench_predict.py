"""Whole-volume prediction of a 256×256×150 T1 volume on CPU: slices/s and the overhead around the net.

Three timings in one run, medians of ``--repeats``:

- ``network``: the bare forward passes of the same slices (already normalised tensors in memory,
  batches of ``--batch-size``, same AMP / channels-last settings) — the reference;
- ``predict_subject``: ``Predictor.predict_subject`` on the loaded Volume (reorient/resample to the
  plan, normalise, slice batching and padding, inverse normalisation, resampling back);
- ``predict_paths``: ``Predictor.predict_paths`` from the NIfTI file on disk to the NIfTI written.

The model is the T1→T2 recipe's U-Net (``configs/phantom_t1_t2_regression.yaml``: depth 3, width 16,
bf16 autocast + channels-last), untrained: its weights do not change the time.

    .venv/bin/python benchmarks/bench_predict.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 150])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from medtrans.config import load_config
    from medtrans.data.layouts import open_dataset
    from medtrans.data.phantom import PhantomSpec, write_phantom
    from medtrans.data.plan import make_plan
    from medtrans.engine.predictor import Predictor
    from medtrans.engine.run import build_method
    from medtrans.io import load

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phantom"
        spec = PhantomSpec(anatomy="brain", size=tuple(args.size), modalities=("t1", "t2"), seed=0)
        write_phantom(root, spec, subjects=1)
        config = load_config(REPO / "configs" / "phantom_t1_t2_regression.yaml",
                             [f"data.root={root}", "device=cpu"])
        plan = make_plan(open_dataset(root), ["t1"], "t2", dims="2d")
        predictor = Predictor.from_parts(build_method(config), config, plan, name="bench", device="cpu",
                                         batch_size=args.batch_size)
        subject = root / "sub-000"
        volume = load(subject / "t1.nii.gz", modality="t1")
        array, _ = plan.to_model_space({"t1": volume})
        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 1 + plan.slice_axis, 0)))
        n = slices.shape[0]  # (S, C, H, W)

        @torch.inference_mode()
        def network() -> None:
            for start in range(0, n, args.batch_size):
                predictor._net(slices[start:start + args.batch_size])

        out_dir = Path(tmp) / "out"

        def paths() -> None:
            predictor.predict_paths([subject / "t1.nii.gz"], out_dir, fmt="nii")
            (out_dir / "t1.nii.gz").unlink()

        runs = {"predict_paths": paths, "predict_subject": lambda: predictor.predict_subject({"t1": volume}),
                "network": network}
        times: dict[str, list[float]] = {label: [] for label in runs}
        with torch.inference_mode():  # warm-up: oneDNN picks its kernels for this shape
            predictor._net(slices[:args.batch_size])
        for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
            for label, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
        median = {label: statistics.median(t) for label, t in times.items()}
        print("each run (s):", {k: [round(x, 2) for x in v] for k, v in times.items()})

    print(f"volume {tuple(args.size)}, {n} slices of {tuple(slices.shape[2:])}, batch {args.batch_size}, "
          f"{args.threads} threads, amp={predictor.amp}, channels_last={predictor.memory_format is not None}")
    print(f"{'':18}{'seconds':>9}{'slices/s':>10}{'× network':>11}")
    for label, t in reversed(median.items()):
        print(f"{label:18}{t:9.2f}{n / t:10.1f}{t / median['network']:11.2f}")


if __name__ == "__main__":
    main()
