"""Where a trained vqar loses against its stage 1: teacher-forced against free-running token accuracy,
and the error of the tokens it samples against the error of stage 1's own tokens, on the test subjects.

Teacher forcing (training) feeds the prior the true previous tokens; sampling feeds it its own. If the
free-running accuracy is far under the teacher-forced one, either errors compound along the sequence
(exposure bias) or the prior copies WHICH of several near-identical codes its neighbours used, which
the source cannot tell and which costs nothing in the image. Two columns tell them apart: how far a
wrong code lies from the right one (median over the mistakes, in units of the median distance between
two codes of the codebook: near 0 for near-duplicates, near 1 for an unrelated code), and the image
error, the mean squared error (model space, inside the body mask) of the greedy sample decoded against
that of stage 1 decoding the true tokens (the ceiling). Every third slice of each test subject with
some body in it.
Run: ``.venv/bin/python benchmarks/bench_vq_exposure.py runs/benchmark_families/runs/vqar
data/benchmark_phantom runs/benchmark_families/splits.json``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from medtrans.data.inputs import find_modality
from medtrans.engine.run import load_trained
from medtrans.io import load
from medtrans.methods.schedules import Noise
from medtrans.nets import blocks


def model_space_slices(plan, root: Path, subject: str, stride: int,
                       every: int = 3) -> tuple[torch.Tensor, ...]:
    """(source, target, mask) slices of one subject in model space, padded to the token stride."""
    volumes = {m: load(find_modality(root / subject, m), modality=m) for m in (*plan.sources, plan.target)}
    prepared = plan.prepare_subject(volumes, subject=subject)
    axis = int(plan.slice_axis)
    mask = np.moveaxis(prepared.mask, axis, 0)
    keep = [i for i in range(0, mask.shape[0], every) if mask[i].sum() > 0]
    source = np.stack([np.moveaxis(prepared.arrays[m], axis, 0)[keep] for m in plan.sources], axis=1)
    target = np.moveaxis(prepared.arrays[plan.target], axis, 0)[keep][:, None]
    padded = [blocks.pad_to_multiple(torch.from_numpy(np.ascontiguousarray(a)).float(), stride)[0]
              for a in (source, target, mask[keep][:, None])]
    return padded[0], padded[1], padded[2].bool()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vqar_run", type=Path)
    parser.add_argument("root", type=Path, help="the dataset root")
    parser.add_argument("splits", type=Path, help="splits.json whose test subjects are used")
    args = parser.parse_args()
    method, _, plan = load_trained(args.vqar_run, which="last")
    method.eval()
    method.temperature = 0.0  # greedy: the prior's single best guess, no sampling noise
    stride = method.vqvae.downsample
    codebook = method.vqvae.quantizer.codebook
    spacing = float(torch.cdist(codebook, codebook).median())
    print(f"{'subject':10}{'slices':>8}{'TF acc':>9}{'free acc':>10}{'ratio':>7}{'miss dist':>11}"
          f"{'MSE stage 1':>13}{'MSE vqar':>10}{'ratio':>7}")
    for subject in json.loads(args.splits.read_text())["test"]:
        source, target, inside = model_space_slices(plan, args.root, subject, stride)
        with torch.no_grad():
            tokens = method.vqvae.tokens(target)
            forced = float(method.token_losses(source, tokens)["accuracy"])
            sampled = method.generate(source, Noise.seeded(range(len(source))))
            free = float((sampled == tokens).float().mean())
            wrong = sampled != tokens
            miss = float((codebook[sampled[wrong]] - codebook[tokens[wrong]]).norm(dim=-1).median()) / spacing
            ceiling = float((method.vqvae.decode_tokens(tokens) - target)[inside].square().mean())
            error = float((method.vqvae.decode_tokens(sampled) - target)[inside].square().mean())
        print(f"{subject:10}{len(source):8d}{forced:9.3f}{free:10.3f}{free / forced:7.2f}{miss:11.2f}"
              f"{ceiling:13.4f}{error:10.4f}{error / ceiling:7.2f}")
    print(f"{args.vqar_run} (checkpoints/last), greedy; MSE in model space inside the body mask")


if __name__ == "__main__":
    main()
