"""U-Net generators against MONAI's BasicUNet at equal wall clock (pix2pix or regression).

Variants of ``configs/phantom_t1_t2_pix2pix.yaml`` (same PatchGAN, losses, optimiser, batch; or, with
``--recipe``, of the regression recipe), trained through the real engine on the phantom leaderboard's
data and split (``--data``, ``--splits``): ``unet-transpose`` (depth 3, width 16: the pix2pix recipe
before it moved to ``unet-basic16``, and the regression recipe's), ``unet-resize`` (the same, resize
upsampling), ``unet-w32d4`` (depth 4, width 32), ``unet-basic``
(BasicUNet's channel schedule in our U-Net: depth 4, ``widths`` 32, 32, 64, 128, 256), ``unet-basic16``
(the same halved: 16, 16, 32, 64, 128) and ``monai-basicunet`` (MONAI's ``BasicUNet`` with its default
features as the generator; registered as a backbone inside this script only; always run). Equal wall
clock that a shared machine cannot skew: each variant's step time is measured first, once (a 2·k-step
run minus a k-step run, interleaved, median of ``--repeats``), then each trains ``--seconds`` / its
s/step steps, so the cosine schedule completes. ``--steps N`` instead trains every variant N steps
(equal steps: no timing runs; s/step is then the training run's own seconds / steps, validation and
checkpoint included). Each variant trains once per training seed (``--seeds``, the config's ``seed``:
weight init and data order), seeds interleaved. Scored by the harness's evaluator (default preset, the
dataset's body masks) on the test subjects. Printed: one JSON line per variant and seed (per-subject
PSNR / SSIM, Nyquist), then a table: PSNR / SSIM means over subjects and seeds and their difference
to the MONAI peer (also per seed), wins = PSNR above the peer's, paired per subject and seed, the
Nyquist fraction of the prediction over the noise-free truth's (mean and max over subjects and seeds;
> 1: a checkerboard), parameters (G + D under pix2pix), s/step, steps and the training runs' mean
seconds (validation and checkpoint included: on a loaded machine this is how far "equal wall clock"
held).
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_unet_peer.py --seeds 0 1`` (three variants
and the peer at 150 s with 2 seeds took 22 minutes on one thread; docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medtrans.config import load_config
from medtrans.engine.evaluator import evaluate
from medtrans.engine.predictor import Predictor
from medtrans.engine.trainer import train
from medtrans.errors import MedtransError
from medtrans.io import load
from medtrans.metrics.spectral import nyquist_fraction
from medtrans.registry import BACKBONES

REPO = Path(__file__).resolve().parents[1]


@BACKBONES.register("monai_basicunet")
class MonaiBasicUNet(nn.Module):
    """MONAI's BasicUNet behind the backbone contract (not time-conditioned: pix2pix / regression only)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = (32, 32, 64, 128, 256, 32), time_dim: int = 0) -> None:
        super().__init__()
        if time_dim:
            raise MedtransError(None, "monai_basicunet takes no time input", "use it with pix2pix/regression")
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(spatial_dims, in_channels, out_channels, features=tuple(features))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, emb: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.net(x)


#: the U-Net of the recipes before the pix2pix recipe moved to unet-basic16 (regression's still)
OLD_RECIPE = ["backbone.args.depth=3", "backbone.args.width=16", "backbone.args.widths=null"]
VARIANTS = {
    "unet-transpose": OLD_RECIPE,
    "unet-resize": [*OLD_RECIPE, "backbone.args.upsample=resize"],
    # the old recipe's U-Net at BasicUNet's depth (4 poolings) and first width (32), doubling per level
    "unet-w32d4": ["backbone.args.width=32", "backbone.args.depth=4", "backbone.args.widths=null"],
    # BasicUNet's channel schedule (first two levels equal, 4 poolings) in our U-Net, and at half width
    "unet-basic": ["backbone.args.depth=4", "backbone.args.widths=[32, 32, 64, 128, 256]"],
    "unet-basic16": ["backbone.args.depth=4", "backbone.args.widths=[16, 16, 32, 64, 128]"],
    "monai-basicunet": ["backbone={name: monai_basicunet}"],
}


RECIPE = "phantom_t1_t2_pix2pix.yaml"  # --recipe


def config_for(variant: str, data: Path, splits: Path, steps: int, runs: Path, seed: int = 0,
               recipe: str = RECIPE):
    return load_config(REPO / "configs" / recipe, [
        f"data.root={data}", f"data.splits_file={splits}", f"data.cache_dir={runs / 'cache'}",
        f"optim.steps={steps}", f"validation.every={steps}", f"checkpoint.every={steps}",
        "logging.progress=false", "logging.tensorboard=false", "logging.samples=false",
        "validation.max_slices=2", "device=cpu", f"seed={seed}", *VARIANTS[variant]])


def timed_run(variant: str, data: Path, splits: Path, steps: int, runs: Path, recipe: str) -> float:
    start = time.perf_counter()
    run_dir = runs / f"t_{variant}_{steps}_{time.time_ns()}"
    train(config_for(variant, data, splits, steps, runs, recipe=recipe), run_dir=run_dir)
    return time.perf_counter() - start


def score(variant: str, seed: int, s_step: float | None, steps: int, data: Path, splits: Path,
          test: list[str], runs: Path, recipe: str) -> dict:
    start = time.perf_counter()
    run = train(config_for(variant, data, splits, steps, runs, seed, recipe),
                run_dir=runs / f"{variant}_s{seed}")
    seconds = time.perf_counter() - start
    predictor = Predictor.from_run(run, which="last", device="cpu")
    out = runs / f"pred_{variant}_s{seed}"
    predictor.predict_paths([data / s for s in test], out)
    result = evaluate(out, data, preset="default")
    nyquist = []
    for s in test:
        pred = torch.from_numpy(np.moveaxis(load(out / f"{s}.nii.gz").array, -1, 0)[:, None].copy())
        truth = torch.from_numpy(np.moveaxis(load(data / s / "truth" / "t2.nii.gz").array, -1, 0)
                                 [:, None].copy())
        nyquist.append(nyquist_fraction(pred.float()) / nyquist_fraction(truth.float()))
    return {"seed": seed, "s_per_step": s_step if s_step is not None else seconds / steps, "steps": steps,
            "train_s": seconds, "params": sum(p.numel() for p in predictor.method.parameters()),
            "psnr": {s: result.per_subject[s]["psnr"] for s in test},
            "ssim": {s: result.per_subject[s]["ssim"] for s in test}, "nyquist": nyquist}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "benchmark_phantom")
    parser.add_argument("--splits", type=Path, default=REPO / "runs" / "benchmark_families" / "splits.json")
    parser.add_argument("--seconds", type=float, default=120.0, help="training wall clock per variant")
    parser.add_argument("--steps", type=int, default=None,
                        help="train every variant this many steps instead (equal steps; no timing runs)")
    parser.add_argument("--timing-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (config `seed`)")
    parser.add_argument("--recipe", default=RECIPE, choices=[RECIPE, "phantom_t1_t2_regression.yaml"],
                        help="the method around the generators: pix2pix (default) or regression")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="a subset (the peer, monai-basicunet, is always run: every row is against it)")
    args = parser.parse_args()
    variants = list(dict.fromkeys([*args.variants, "monai-basicunet"]))
    seeds = list(dict.fromkeys(args.seeds))
    test = json.loads(args.splits.read_text())["test"]
    rows: dict[str, dict[int, dict]] = {v: {} for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        k = args.timing_steps
        s_steps: dict[str, float | None] = dict.fromkeys(variants)
        if args.steps is None:  # step times once, interleaved, so a change of load hits every variant alike
            per_step: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(args.repeats):
                for variant in variants:
                    long = timed_run(variant, args.data, args.splits, 2 * k, runs, args.recipe)
                    short = timed_run(variant, args.data, args.splits, k, runs, args.recipe)
                    per_step[variant].append(max(long - short, 1e-3) / k)
            s_steps = {v: statistics.median(per_step[v]) for v in variants}
            print(json.dumps({"s_per_step": s_steps, "samples": per_step}), flush=True)
        for seed in seeds:
            for variant in variants:
                s_step = s_steps[variant]
                steps = args.steps if args.steps is not None else max(1, int(args.seconds / s_step))
                rows[variant][seed] = score(variant, seed, s_step, steps, args.data, args.splits, test, runs,
                                            args.recipe)
                print(json.dumps({variant: rows[variant][seed]}), flush=True)
    peer = rows["monai-basicunet"]
    budget = f"{args.steps} steps each" if args.steps is not None else f"{args.seconds:g} s each"
    print(f"\n{budget}; seeds {seeds}; {len(test)} test subjects; means over subjects and seeds")
    print(f"{'variant':<17}{'params':>11}{'s/step':>8}{'steps':>7}{'train s':>8}{'PSNR':>8}{'Δ peer':>8}"
          f"  {'Δ per seed':>16}{'SSIM':>7}{'Δ peer':>8}{'wins':>8}  Nyquist × truth mean (max)")
    for variant, by_seed in rows.items():
        psnr = np.mean([r["psnr"][s] for r in by_seed.values() for s in test])
        ssim = np.mean([r["ssim"][s] for r in by_seed.values() for s in test])
        dp = psnr - np.mean([r["psnr"][s] for r in peer.values() for s in test])
        ds = ssim - np.mean([r["ssim"][s] for r in peer.values() for s in test])
        per_seed = [np.mean([by_seed[seed]["psnr"][s] - peer[seed]["psnr"][s] for s in test])
                    for seed in seeds]
        wins = sum(by_seed[seed]["psnr"][s] > peer[seed]["psnr"][s] for seed in seeds for s in test)
        nyq = [x for r in by_seed.values() for x in r["nyquist"]]
        first = by_seed[seeds[0]]
        steps = "/".join(sorted({str(r["steps"]) for r in by_seed.values()}))
        s_step = np.mean([r["s_per_step"] for r in by_seed.values()])
        train_s = np.mean([r["train_s"] for r in by_seed.values()])
        print(f"{variant:<17}{first['params']:>11}{s_step:8.3f}{steps:>7}{train_s:8.0f}{psnr:8.2f}{dp:+8.2f}"
              f"  {' '.join(f'{d:+.2f}' for d in per_seed):>16}{ssim:7.3f}{ds:+8.3f}"
              f"{f'{wins}/{len(seeds) * len(test)}':>8}  {np.mean(nyq):.2f} ({max(nyq):.2f})")


if __name__ == "__main__":
    main()
