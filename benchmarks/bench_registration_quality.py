"""Does registration pay? Regression trained on misaligned T1/T2 pairs, with and without rigid registration.

Per seed: simulate brains whose T2 is moved by a random rigid transform (``--misalign MM DEG``), train the
T1 → T2 regression recipe twice with the same budget, seed and split — plan without registration, and
with ``registration: rigid`` — both with N4 on T1 and T2 (so only registration differs), then translate
the test subjects' T1 and score inside the brain against the noise- and bias-free T2 *in the T1's frame*:
the same phantom simulated without misalignment (same seed, so the same anatomy and scanner gain).
A third run (``aligned``) trains on that motion-free phantom: the ceiling registration can reach.

Two scores per subject. "abs": PSNR / SSIM in scanner units, as ``medtrans evaluate`` gives them. The
phantom draws a scanner gain per subject (800–1250) that no T1 → T2 model can know (the prediction
takes the plan's median T2 scale), so this score mostly says how close a subject's gain is to the
median. "norm": prediction and truth each put on their own MR percentile scale (the plan's target
normaliser, stats of the image itself) first, which removes the gain and leaves the anatomy; the
ratio printed at the end (registered − unregistered) is on this score, paired per subject.

It also checks the registered cache independently: the transform found for each training subject
against the inverse of the motion dataset.json records (mean target registration error over the
brain), next to the QA's NMI before / after from the cache's alignment.csv.

    .venv/bin/python benchmarks/bench_registration_quality.py [--misalign 4 4] [--train-steps 300]
        [--subjects 12] [--seeds 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
#: plan name → (training data, registration)
PLANS = {"unregistered": ("moved", "null"), "registered": ("moved", "rigid"), "aligned": ("aligned", "null")}


def own_scale(array: np.ndarray) -> np.ndarray:
    """``array`` on its own MR percentile scale ([-1, 1] between its foreground 0.5 and 99.5 percentiles)."""
    from medtrans.data.normalise import Normaliser

    norm = Normaliser.for_modality("t2")
    return norm.forward(array, norm.stats(array))


def registration_check(run: Path, moved: Path, subjects: list[str]) -> dict[str, float]:
    """Median NMI before / after (alignment.csv) and mean TRE (mm) of the cached transforms vs the truth."""
    from medtrans.data import registration as reg
    from medtrans.data.prepare import ALIGNMENT_FILE
    from medtrans.demo import brain_mask
    from medtrans.io import load

    (folder,) = [p.parent for p in (run / "cache").glob(f"*/{ALIGNMENT_FILE}")]
    with open(folder / ALIGNMENT_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    manifest = json.loads((folder / "manifest.json").read_text())["subjects"]
    applied = json.loads((moved / "dataset.json").read_text())["subjects"]
    before, after = [], []
    for sid in subjects:
        labels = load(moved / sid / "labels.nii.gz")
        points = reg.world_points(brain_mask(labels.array), labels.affine)
        truth = np.linalg.inv(np.asarray(applied[sid]["misalignment"]["t2"]["matrix"]))  # T2 world → T1 world
        found = np.asarray(manifest[sid]["transforms"]["t1"])
        before.append(reg.target_registration_error(np.eye(4), truth, points))
        after.append(reg.target_registration_error(found, truth, points))
    return {"nmi_before": float(np.median([float(r["nmi_before"]) for r in rows])),
            "nmi_after": float(np.median([float(r["nmi_after"]) for r in rows])),
            "flagged": sum(r["flagged"] == "True" for r in rows), "pairs": len(rows),
            "tre_before_mm": float(np.median(before)), "tre_after_mm": float(np.median(after)),
            "tre_after_max_mm": float(np.max(after))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--misalign", type=float, nargs=2, default=[4.0, 4.0], metavar=("MM", "DEG"))
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seed (and split) per run")
    parser.add_argument("--plans", nargs="+", choices=PLANS, default=list(PLANS),
                        help="aligned: trained on the phantom simulated without motion (the ceiling)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from medtrans.config import load_config
    from medtrans.data.phantom import PhantomSpec, write_phantom
    from medtrans.demo import brain_mask
    from medtrans.engine.predictor import Predictor
    from medtrans.engine.trainer import train
    from medtrans.io import load
    from medtrans.metrics.presets import evaluate_pair

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        moved, aligned = Path(tmp) / "moved", Path(tmp) / "aligned"
        for root, misalign in ((moved, tuple(args.misalign)), (aligned, (0.0, 0.0))):
            write_phantom(root, PhantomSpec(anatomy="brain", size=tuple(args.size), modalities=("t1", "t2"),
                                            seed=0, misalign=misalign), subjects=args.subjects)
        for seed in args.seeds:
            for name in args.plans:
                data, registration = PLANS[name]
                config = load_config(REPO / "configs" / "phantom_t1_t2_regression.yaml", [
                    f"data.root={Path(tmp) / data}", f"optim.steps={args.train_steps}", f"seed={seed}",
                    "device=cpu", "logging.progress=false", "logging.tensorboard=false",
                    f"validation.every={args.train_steps}", f"checkpoint.every={args.train_steps}",
                    f"plan.options={{registration: {registration}, bias_correction: [t1, t2]}}"])
                start = time.perf_counter()
                run = train(config, run_dir=Path(tmp) / f"{name}-{seed}")
                seconds = time.perf_counter() - start
                splits = json.loads((run / "splits.json").read_text())
                if registration != "null":
                    print(f"seed {seed} registered cache:",
                          json.dumps(registration_check(run, moved, splits["train"])), flush=True)
                predictor = Predictor.from_run(run, which="last", device="cpu")
                for sid in splits["test"]:
                    pred = predictor.predict_subject({"t1": load(moved / sid / "t1.nii.gz", modality="t1")})
                    pred_arr = np.asarray(pred.array, np.float32)
                    truth = np.asarray(load(aligned / sid / "truth" / "t2.nii.gz").array, np.float32)
                    mask = brain_mask(load(aligned / sid / "labels.nii.gz").array)
                    absolute = evaluate_pair(pred_arr, truth, mask)
                    norm = evaluate_pair(own_scale(pred_arr), own_scale(truth), mask)
                    row = {"seed": seed, "plan": name, "subject": sid, "psnr_abs": absolute["psnr"],
                           "ssim_abs": absolute["ssim"], "psnr_norm": norm["psnr"], "ssim_norm": norm["ssim"],
                           "ncc": norm["ncc"], "train_s": seconds}
                    rows.append(row)
                    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)
    print("\nplan          | PSNR abs | SSIM abs | PSNR norm | SSIM norm | NCC  (medians: subjects × seeds)")
    for name in args.plans:
        sel = [r for r in rows if r["plan"] == name]
        print(f"{name:13s} | " + " | ".join(f"{np.median([r[k] for r in sel]):8.3f}" for k in
                                            ("psnr_abs", "ssim_abs", "psnr_norm", "ssim_norm", "ncc")))
    if not {"unregistered", "registered"} <= set(args.plans):
        return
    unreg = {(r["seed"], r["subject"]): r for r in rows if r["plan"] == "unregistered"}
    gains = {k: [r[k] - unreg[(r["seed"], r["subject"])][k] for r in rows if r["plan"] == "registered"]
             for k in ("psnr_norm", "ssim_norm", "psnr_abs")}
    print(f"registered − unregistered, paired per subject ({len(gains['psnr_norm'])} pairs, "
          f"misalignment up to {args.misalign[0]} mm / {args.misalign[1]}°): "
          f"PSNR norm median {np.median(gains['psnr_norm']):+.2f} dB "
          f"(range {min(gains['psnr_norm']):+.2f} … {max(gains['psnr_norm']):+.2f}), "
          f"SSIM norm {np.median(gains['ssim_norm']):+.3f}, PSNR abs {np.median(gains['psnr_abs']):+.2f} dB")


if __name__ == "__main__":
    main()
