"""Many-to-one with missing sources: T1 + T2 + PD → FLAIR, predicted from every subset of the sources.

A brain phantom with T1, T2, PD and FLAIR is written (``--subjects`` of ``--size``, ``--seed``). The
recipe ``configs/phantom_t1t2pd_flair_regression_dropout.yaml`` (U-Net regression, 2D, source dropout
``--dropout``) is trained ``--steps`` steps through the real engine (``load_config`` + ``train``, CPU);
the reference, measured in the same run, is the same recipe and budget with ``data.source_dropout=0``.
Each test subject is then translated by ``Predictor.predict_paths`` (the ``medtrans predict`` path) from
every non-empty subset of the sources: a missing source is a file absent from the subject folder given
to the predictor (a temporary folder of symlinks; the dataset is never touched). Every prediction is
scored by ``engine.evaluator.evaluate`` (preset default, inside the brain mask of ``medtrans.demo``)
against the acquired FLAIR; the phantom's noise-free FLAIR gives the ``truth`` column. Baselines, the
demo's ``BASELINES`` on each single source, inside the mask: its min-max mapped onto FLAIR's (trivial)
and its least-squares linear fit to FLAIR (an oracle: it uses the target). Printed: PSNR mean ± sd over
the test subjects, SSIM, and the paired difference to the no-dropout run on all three sources.
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_many_to_one.py`` (about 10 minutes on 1 core).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from medtrans.config import load_config
from medtrans.data.phantom import PhantomSpec, write_phantom
from medtrans.demo import BASELINES, brain_mask
from medtrans.engine.evaluator import evaluate
from medtrans.engine.predictor import Predictor
from medtrans.engine.trainer import train
from medtrans.io import SyntheticInfo, Volume, load, save

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "phantom_t1t2pd_flair_regression_dropout.yaml"
SOURCES = ("t1", "t2", "pd")
TARGET = "flair"


def subsets(sources: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, smallest first, in the sources' order."""
    return [c for k in range(1, len(sources) + 1) for c in itertools.combinations(sources, k)]


def train_run(data: Path, runs: Path, name: str, steps: int, dropout: float) -> Path:
    overrides = [f"data.root={data}", f"name={name}", f"optim.steps={steps}", f"checkpoint.every={steps}",
                 f"data.source_dropout={dropout}", "device=cpu", "seed=0", "logging.tensorboard=false",
                 "logging.progress=false"]
    return Path(train(load_config(RECIPE, overrides), run_dir=runs / name))


def subset_inputs(data: Path, subjects: Sequence[str], present: Sequence[str], folder: Path) -> Path:
    """``folder/<subject>/<modality>.nii.gz`` symlinks to the present sources only."""
    for subject in subjects:
        (folder / subject).mkdir(parents=True)
        for modality in present:
            (folder / subject / f"{modality}.nii.gz").symlink_to(data / subject / f"{modality}.nii.gz")
    return folder


def scores(predictions: Path, data: Path, masks: Path) -> dict[str, np.ndarray]:
    """Per-subject psnr, ssim and truth_psnr (against the noise-free FLAIR) in the brain mask."""
    result = evaluate(predictions, data, mask=masks, preset="default", ref_modality=TARGET)
    subjects = sorted(result.per_subject)
    return {m: np.array([result.per_subject[s][m] for s in subjects]) for m in ("psnr", "ssim", "truth_psnr")}


def write_baseline(data: Path, subjects: Sequence[str], source: str, masks: Path, out: Path, how: str,
                   fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> Path:
    """``fn(source, flair, mask)`` of each subject as a marked synthetic FLAIR in ``out``."""
    out.mkdir(parents=True)
    for subject in subjects:
        image, flair = load(data / subject / f"{source}.nii.gz"), load(data / subject / f"{TARGET}.nii.gz")
        mask = load(masks / f"{subject}.nii.gz").array
        info = SyntheticInfo(model=f"baseline-{source}", source=str(data / subject / f"{source}.nii.gz"),
                             method=how, target=TARGET)
        save(image.with_array(fn(image.array, flair.array, mask), modality=TARGET), out / f"{subject}.nii.gz",
             synthetic=info)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--size", default="64x64x32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--dropout", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_many_to_one_"))
    size = tuple(int(v) for v in args.size.split("x"))
    rows: list[tuple[str, str, dict[str, np.ndarray]]] = []
    try:
        start = time.perf_counter()
        data = write_phantom(work / "data", PhantomSpec(anatomy="brain", size=size, seed=args.seed,
                                                        modalities=(*SOURCES, TARGET)), args.subjects)
        masks = work / "masks"
        masks.mkdir()
        for subject in sorted(p for p in data.iterdir() if p.is_dir()):
            labels = load(subject / "labels.nii.gz")
            save(Volume(brain_mask(labels.array), labels.affine, {"modality": "mask", "units": "label"}),
                 masks / f"{subject.name}.nii.gz")
        runs = {"dropout": train_run(data, work / "runs", "dropout", args.steps, args.dropout)}
        print(f"dropout run trained ({time.perf_counter() - start:.0f} s)", flush=True)
        runs["reference"] = train_run(data, work / "runs", "no_dropout", args.steps, 0.0)
        print(f"no-dropout run trained ({time.perf_counter() - start:.0f} s)", flush=True)
        test = json.loads((runs["dropout"] / "splits.json").read_text())["test"]
        assert test == json.loads((runs["reference"] / "splits.json").read_text())["test"], "splits differ"

        plans = [("no dropout (reference)", runs["reference"], SOURCES)]
        plans += [(f"dropout {args.dropout:g}", runs["dropout"], present) for present in subsets(SOURCES)]
        for model, run, present in plans:
            label = "+".join(present)
            inputs = subset_inputs(data, test, present, work / "inputs" / f"{run.name}_{label}")
            out = work / "pred" / f"{run.name}_{label}"
            Predictor.from_run(run, which="last", device="cpu").predict_paths([inputs], out)
            rows.append((model, label, scores(out, data, masks)))
        for folder, fn, how in BASELINES.values():
            for source in SOURCES:
                out = write_baseline(data, test, source, masks, work / "pred" / f"{folder}_{source}", how, fn)
                rows.append((f"baseline: {how}", source, scores(out, data, masks)))
        total = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref = rows[0][2]
    print(f"\n{args.subjects} brain phantoms {args.size} seed {args.seed}, {len(test)} test subjects "
          f"({', '.join(test)}), {args.steps} training steps per run, 1 thread, {total:.0f} s in all")
    print("Scored inside the brain mask against the acquired FLAIR (truth: the noise-free FLAIR); "
          "Δ: paired mean difference to the no-dropout run on t1+t2+pd")
    print("| model | sources present | PSNR dB (mean ± sd) | Δ PSNR | SSIM | Δ SSIM | truth PSNR dB |")
    print("|---|---|---|---|---|---|---|")
    for model, present, s in rows:
        print(f"| {model} | {present} | {s['psnr'].mean():.2f} ± {s['psnr'].std(ddof=1):.2f} "
              f"| {(s['psnr'] - ref['psnr']).mean():+.2f} | {s['ssim'].mean():.4f} "
              f"| {(s['ssim'] - ref['ssim']).mean():+.4f} | {s['truth_psnr'].mean():.2f} |")


if __name__ == "__main__":
    main()
