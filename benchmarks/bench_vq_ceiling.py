"""The stage-1 ceiling on the test subjects: a trained vqvae's reconstruction of each test TARGET, scored
like a translation (the harness's preset and masks), beside the vqar runs built on it.

The trainer reports the reconstruction PSNR on the validation subjects only, so a vqar's test score
could not be set against its ceiling on the same subjects. This script reconstructs each test target
through the predictor's own path (the plan's per-volume normalisation, slice inference, the plan's
inverse back to the target's units; the T2 is fed where the source would go, which the MR percentile
normaliser, scaling each volume by its own percentiles, treats identically), writes the volumes,
scores them with ``engine.evaluator.evaluate`` and prints per subject the ceiling, each given run's
score (its ``eval/per_subject.csv``, as the harness writes it) and the difference.
Run: ``.venv/bin/python benchmarks/bench_vq_ceiling.py runs/benchmark_families/runs/vqvae
data/benchmark_phantom runs/benchmark_families/splits.json --compare runs/benchmark_families/runs/vqar``
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from medtrans.data.inputs import find_modality
from medtrans.engine.evaluator import evaluate
from medtrans.engine.predictor import Predictor
from medtrans.engine.run import load_trained
from medtrans.io import load, save


def reconstruct_test(run: Path, root: Path, subjects: list[str], out: Path) -> str:
    """Write ``<out>/<subject>.nii.gz``: the vqvae's reconstruction of each subject's target; returns
    the target's name."""
    method, config, plan = load_trained(run, which="last")
    # the predictor refuses a reconstructing method by design (it cannot translate); here it is built
    # directly and given the target where the source goes: the MR percentile normaliser scales each
    # volume by its own percentiles, so the target is normalised exactly as in training
    kinds = {plan.normalisation[m].kind for m in (*plan.sources, plan.target)}
    if len(plan.sources) != 1 or kinds != {"mr_percentile"}:
        raise SystemExit(f"{run}: needs one MR source and an MR target")
    predictor = Predictor(method=method, config=config, plan=plan, name=run.name,
                          device=torch.device("cpu"), batch_size=int(config.optim.batch_size))
    out.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        path = find_modality(root / subject, plan.target)
        volume = load(path, modality=plan.target)
        reconstruction = predictor.predict_subject({plan.sources[0]: volume})
        save(reconstruction, out / f"{subject}.nii.gz", reference=volume)
    return plan.target


def per_subject(csv_path: Path, metric: str) -> dict[str, float]:
    with csv_path.open() as f:
        return {row["subject"]: float(row[metric]) for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vqvae_run", type=Path)
    parser.add_argument("root", type=Path, help="the dataset root")
    parser.add_argument("splits", type=Path, help="splits.json whose test subjects are scored")
    parser.add_argument("--compare", type=Path, nargs="*", default=[],
                        help="harness runs (with eval/per_subject.csv) to set against the ceiling")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--metric", default="psnr")
    args = parser.parse_args()
    subjects = json.loads(args.splits.read_text())["test"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "reconstruction"
        target = reconstruct_test(args.vqvae_run, args.root, subjects, folder)
        ceiling = evaluate(folder, args.root, preset=args.preset, ref_modality=target).per_subject
    # labelled by the path as given: harness runs of two specs share their entry names
    rows = [("ceiling", {s: ceiling[s][args.metric] for s in subjects})]
    rows += [(str(run), per_subject(run / "eval" / "per_subject.csv", args.metric)) for run in args.compare]
    width = max(16, *(len(name) + 2 for name, _ in rows))
    print(f"{'':{width}}" + "".join(f"{s:>10}" for s in subjects) + f"{'mean':>10}{'Δ ceiling':>11}")
    base = np.mean([rows[0][1][s] for s in subjects])
    for name, values in rows:
        mean = float(np.mean([values[s] for s in subjects]))
        print(f"{name:{width}}" + "".join(f"{values[s]:10.2f}" for s in subjects) + f"{mean:10.2f}"
              f"{mean - base:+11.2f}")
    print(f"{args.metric} under preset {args.preset!r}; ceiling: {args.vqvae_run} (checkpoints/last) "
          "reconstructing each test target")


if __name__ == "__main__":
    main()
