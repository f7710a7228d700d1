"""Tiny configurations of every backbone, shared by the backbone tests (one place to add a new one)."""

from __future__ import annotations

import torch

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
