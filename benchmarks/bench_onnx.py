"""onnxruntime against PyTorch: whole-volume prediction of a T1 volume through the same Predictor path.

The model is the T1→T2 recipe's U-Net (``configs/phantom_t1_t2_regression.yaml``: depth 3, width 16),
untrained (weights do not change the time), exported with ``medtrans.engine.export.export_method``.
Timed, interleaved, medians of ``--repeats``: ``Predictor.predict_subject`` with

- ``torch fp32``: the reference (what ONNX computes: fp32, no autocast);
- ``torch recipe``: the recipe's settings (bf16 autocast + channels-last, the fast CPU path);
- ``onnxruntime``: the Predictor with the network call swapped for an onnxruntime session (fp32).

    .venv/bin/python benchmarks/bench_onnx.py [--repeats 3] [--threads 2] [--size 256 256 150]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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
    from medtrans.engine.export import export_method, onnx_predictor
    from medtrans.engine.predictor import Predictor
    from medtrans.engine.run import build_method
    from medtrans.io import load

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phantom"
        spec = PhantomSpec(anatomy="brain", size=tuple(args.size), modalities=("t1", "t2"), seed=0)
        write_phantom(root, spec, subjects=1)
        predictors = {}
        for label, overrides in (("torch fp32", ["optim.amp=false", "optim.channels_last=false"]),
                                 ("torch recipe", [])):
            config = load_config(REPO / "configs" / "phantom_t1_t2_regression.yaml",
                                 [f"data.root={root}", "device=cpu", *overrides])
            plan = make_plan(open_dataset(root), ["t1"], "t2", dims="2d")
            torch.manual_seed(0)
            predictors[label] = Predictor.from_parts(build_method(config), config, plan, name=label,
                                                     device="cpu", batch_size=args.batch_size)
        reference = predictors["torch fp32"]
        volume = load(root / "sub-000" / "t1.nii.gz", modality="t1")
        array, _ = reference.plan.to_model_space({"t1": volume})
        source = torch.rand(1, 1, 256, 256) * 2 - 1
        start = time.perf_counter()
        difference, _ = export_method(reference.method, reference.config, reference.plan, source,
                                      Path(tmp) / "model.onnx")
        export_seconds = time.perf_counter() - start
        predictors["onnxruntime"] = onnx_predictor(Path(tmp) / "model.onnx", batch_size=args.batch_size)
        for p in predictors.values():  # warm-up: kernels picked for this shape
            p.predict_array(array[:, :, :, :args.batch_size] if reference.plan.slice_axis == 2 else array)
        times: dict[str, list[float]] = {label: [] for label in predictors}
        outputs = {}
        for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
            for label, p in predictors.items():
                start = time.perf_counter()
                outputs[label] = p.predict_subject({"t1": volume}).array
                times[label].append(time.perf_counter() - start)
    median = {label: statistics.median(t) for label, t in times.items()}
    agree = float(abs(outputs["onnxruntime"] - outputs["torch fp32"]).max())
    print("each run (s):", {k: [round(x, 2) for x in v] for k, v in times.items()})
    print(f"volume {tuple(args.size)}, model-space {tuple(array.shape[1:])}, slice axis "
          f"{reference.plan.slice_axis}, batch {args.batch_size}, {args.threads} threads; export "
          f"{export_seconds:.1f} s, check difference {difference:.2e}; max |onnx - torch fp32| of the "
          f"volume {agree:.3g} (original units)")
    print(f"{'':14}{'seconds':>9}{'× torch fp32':>14}")
    for label, t in median.items():
        print(f"{label:14}{t:9.2f}{t / median['torch fp32']:14.2f}")


if __name__ == "__main__":
    main()
