"""vqar costs and ceiling: stage-1 reconstruction PSNR, and sampling tokens/s with and without the KV cache.

(b), measured first: a ``vqar`` with the recipe's transformer (random weights: speed does not depend on
them) samples ``--batch`` slices of ``--slice``² (L = (slice / downsample)² tokens each: the recipe's
4×, or ``--downsample``); printed: medians over ``--repeats`` of tokens/s with the cache and without it
(the prefix re-run for every token, as MONAI does), and their ratio. (a) A brain phantom (``--subjects``
× ``--size``, T1 → T2) trains the ``vqvae`` of ``configs/phantom_t2_vqvae.yaml`` (its autoencoder
options) for ``--steps`` (0: skip) through the real trainer; printed: the validation reconstruction PSNR
of the target (the ceiling of any vqar on it) and, as the reference from the same run, the PSNR of the
validation T1 read as T2.
Run: ``.venv/bin/python benchmarks/bench_vqar.py`` (minutes on 2 cores).
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
import yaml

from medtrans.config import validate_config
from medtrans.data.phantom import PhantomSpec, write_phantom
from medtrans.engine.data import build_data
from medtrans.engine.trainer import train
from medtrans.methods.schedules import Noise
from medtrans.methods.vqar import VQAR
from medtrans.metrics import psnr

REPO = Path(__file__).resolve().parents[1]


def stage1(root: Path, runs: Path, steps: int) -> tuple[float, float]:
    """(validation reconstruction PSNR of the trained vqvae, PSNR of T1 read as T2) on the same subjects."""
    raw = yaml.safe_load((REPO / "configs" / "phantom_t2_vqvae.yaml").read_text())
    raw["data"]["root"] = str(root)
    raw["optim"].update(steps=steps, amp=False)
    raw.update(device="cpu", logging={"progress": False, "tensorboard": False},
               validation={"every": steps, "max_subjects": 4}, checkpoint={"every": steps})
    config = validate_config(raw)
    run = train(config, run_dir=runs / "stage1")
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    data = build_data(config.with_absolute_paths(), run, reuse=True)
    identity = [float(psnr(s.source[0], s.target, mask=s.mask, data_range=data.data_range))
                for s in data.val]
    return float(state["history"][-1]["psnr"]), float(np.mean(identity))


def tokens_per_second(method: VQAR, source: torch.Tensor, kv_cache: bool) -> float:
    tokens = source.shape[0] * (source.shape[-1] // method.vqvae.downsample) ** 2
    start = time.perf_counter()
    method.generate(source, Noise.seeded(range(source.shape[0])), kv_cache=kv_cache)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 24])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--slice", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--downsample", type=int, default=None, help="token stride (default: the recipe's)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    recipe = yaml.safe_load((REPO / "configs" / "phantom_t1_t2_vqar.yaml").read_text())["method"]["args"]
    if args.downsample is not None:
        recipe["autoencoder"] = {**recipe["autoencoder"], "downsample": args.downsample}
    torch.manual_seed(0)
    method = VQAR(2, 1, **recipe).eval()
    source = torch.randn(args.batch, 1, args.slice, args.slice)
    with torch.inference_mode():
        tokens_per_second(method, source[:1, :, :8, :8], True)  # warm-up
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for cached in (True, False):
                rates[cached].append(tokens_per_second(method, source, cached))
    cached, plain = statistics.median(rates[True]), statistics.median(rates[False])
    length = (args.slice // method.vqvae.downsample) ** 2
    runs = {k: [round(r) for r in v] for k, v in rates.items()}
    print(f"sampling {args.batch} × {length} tokens: KV cache {cached:.0f} tokens/s, without "
          f"{plain:.0f} tokens/s, ratio {cached / plain:.2f}×  (runs: {runs})", flush=True)
    if args.steps == 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = write_phantom(Path(tmp) / "phantom", PhantomSpec(anatomy="brain", size=tuple(args.size),
                                                                 modalities=("t1", "t2"), seed=0),
                             subjects=args.subjects)
        ceiling, identity = stage1(root, Path(tmp) / "runs", args.steps)
    print(f"stage 1 ({args.steps} steps, {args.size}): reconstruction PSNR {ceiling:.2f} dB; "
          f"reference T1-as-T2 PSNR {identity:.2f} dB", flush=True)

if __name__ == "__main__":
    main()
