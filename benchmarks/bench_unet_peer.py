"""The pix2pix recipe against a MONAI-BasicUNet pix2pix at equal wall-clock time, and transpose vs resize.

Variants of ``configs/phantom_t1_t2_pix2pix.yaml`` (same PatchGAN, losses, optimiser, batch), trained
through the real engine on the phantom leaderboard's data and split (``--data``, ``--splits``):
``unet-transpose`` (the recipe), ``unet-resize`` and ``monai-basicunet`` (MONAI's ``BasicUNet`` with its
default features as the generator; registered as a backbone inside this script only). Equal wall
clock that a shared machine cannot skew: each variant's step time is measured first (a 2·k-step run
minus a k-step run, interleaved, median of ``--repeats``), then each trains ``--seconds`` / its
s/step steps, so the cosine schedule completes. Scored by the harness's evaluator (default preset,
the dataset's body masks) on the test subjects; printed: PSNR / SSIM per subject and their mean
difference to the MONAI peer, the Nyquist fraction of the prediction over the noise-free truth's
(> 1: a checkerboard), parameters, s/step and steps.
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_unet_peer.py`` (about 10 minutes).
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


VARIANTS = {
    "unet-transpose": [],
    "unet-resize": ["backbone.args.upsample=resize"],
    # the recipe's U-Net at BasicUNet's depth (4 poolings) and first width (32)
    "unet-w32d4": ["backbone.args.width=32", "backbone.args.depth=4"],
    "monai-basicunet": ["backbone={name: monai_basicunet}"],
}


def config_for(variant: str, data: Path, splits: Path, steps: int, runs: Path):
    return load_config(REPO / "configs" / "phantom_t1_t2_pix2pix.yaml", [
        f"data.root={data}", f"data.splits_file={splits}", f"data.cache_dir={runs / 'cache'}",
        f"optim.steps={steps}", f"validation.every={steps}", f"checkpoint.every={steps}",
        "logging.progress=false", "logging.tensorboard=false", "logging.samples=false",
        "validation.max_slices=2", "device=cpu", *VARIANTS[variant]])


def timed_run(variant: str, data: Path, splits: Path, steps: int, runs: Path) -> float:
    start = time.perf_counter()
    run_dir = runs / f"t_{variant}_{steps}_{time.time_ns()}"
    train(config_for(variant, data, splits, steps, runs), run_dir=run_dir)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "benchmark_phantom")
    parser.add_argument("--splits", type=Path, default=REPO / "runs" / "benchmark_families" / "splits.json")
    parser.add_argument("--seconds", type=float, default=120.0, help="training wall clock per variant")
    parser.add_argument("--timing-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="a subset (the peer, monai-basicunet, is always run: every row is against it)")
    args = parser.parse_args()
    variants = list(dict.fromkeys([*args.variants, "monai-basicunet"]))
    test = json.loads(args.splits.read_text())["test"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        k = args.timing_steps
        per_step: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved, so a change of load hits every variant alike
            for variant in variants:
                long = timed_run(variant, args.data, args.splits, 2 * k, runs)
                short = timed_run(variant, args.data, args.splits, k, runs)
                per_step[variant].append(max(long - short, 1e-3) / k)
        for variant in variants:
            s_step = statistics.median(per_step[variant])
            steps = max(1, int(args.seconds / s_step))
            start = time.perf_counter()
            run = train(config_for(variant, args.data, args.splits, steps, runs), run_dir=runs / variant)
            seconds = time.perf_counter() - start
            predictor = Predictor.from_run(run, which="last", device="cpu")
            out = runs / f"pred_{variant}"
            predictor.predict_paths([args.data / s for s in test], out)
            result = evaluate(out, args.data, preset="default")
            nyquist = []
            for s in test:
                pred = torch.from_numpy(np.moveaxis(load(out / f"{s}.nii.gz").array, -1, 0)[:, None].copy())
                truth = torch.from_numpy(np.moveaxis(load(args.data / s / "truth" / "t2.nii.gz").array, -1, 0)
                                         [:, None].copy())
                nyquist.append(nyquist_fraction(pred.float()) / nyquist_fraction(truth.float()))
            rows[variant] = {"s_per_step": s_step, "steps": steps, "train_s": seconds,
                             "params": sum(p.numel() for p in predictor.method.parameters()),
                             "psnr": {s: result.per_subject[s]["psnr"] for s in test},
                             "ssim": {s: result.per_subject[s]["ssim"] for s in test}, "nyquist": nyquist}
            print(json.dumps({variant: rows[variant]}), flush=True)
    peer = rows["monai-basicunet"]
    print(f"\n{'variant':<17}{'G+D params':>11}{'s/step':>8}{'steps':>7}{'PSNR':>8}{'Δ peer':>8}{'SSIM':>7}"
          f"{'Δ peer':>8}  Nyquist × truth")
    for variant, r in rows.items():
        psnr, ssim = np.mean(list(r["psnr"].values())), np.mean(list(r["ssim"].values()))
        dp = psnr - np.mean(list(peer["psnr"].values()))
        ds = ssim - np.mean(list(peer["ssim"].values()))
        wins = sum(r["psnr"][s] > peer["psnr"][s] for s in test)
        print(f"{variant:<17}{r['params']:>11}{r['s_per_step']:8.3f}{r['steps']:7d}{psnr:8.2f}{dp:+8.2f}"
              f"{ssim:7.3f}{ds:+8.3f}  {' / '.join(f'{x:.2f}' for x in r['nyquist'])}"
              f"  (PSNR above the peer on {wins}/{len(test)} subjects)")


if __name__ == "__main__":
    main()
