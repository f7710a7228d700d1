"""Tiny configurations of every backbone, shared by the backbone tests (one place to add a new one)."""

from __future__ import annotations

import numpy as np
import torch

from medtrans.data.phantom import PhantomSpec, simulate
from medtrans.nets import build_backbone

#: the smallest sensible configuration of each backbone, so each test runs in about a second
TINY: dict[str, dict] = {
    "unet": {"width": 4, "depth": 2},
    "resnet": {"width": 4, "n_blocks": 1},
    "resvit": {"width": 4, "n_blocks": 2, "transformer_at": (0, 1), "d_model": 16, "heads": 2, "layers": 1},
    "mamba": {"width": 4, "n_blocks": 2, "ssm_at": (0,), "d_state": 4, "head_dim": 8, "chunk": 8},
}
TIME_DIM = 8


def tiny(name: str, in_ch: int = 2, out_ch: int = 3, spatial_dims: int = 2, time_dim: int = TIME_DIM,
         seed: int = 0, **options):
    assert name in TINY, f"backbone {name!r} is registered but has no tiny spec in {__file__}"
    torch.manual_seed(seed)
    return build_backbone({"name": name, **TINY[name], "time_dim": time_dim, **options}, spatial_dims, in_ch,
                          out_ch)


def phantom_pairs(count: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(source T1, target T2) slices of the simulated brain, each scaled by its own maximum."""
    spec = PhantomSpec(size=(size, size, 1), modalities=("t1", "t2"))
    pairs = [simulate(spec, i).images for i in range(count)]
    t1, t2 = (torch.from_numpy(np.stack([p[m][..., 0] for p in pairs]).astype(np.float32))[:, None]
              for m in ("t1", "t2"))
    return t1 / t1.amax((2, 3), keepdim=True), t2 / t2.amax((2, 3), keepdim=True)
