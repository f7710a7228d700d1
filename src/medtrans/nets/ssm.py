"""Mamba-like state-space backbone (I2I-Mamba / VMamba style) in plain PyTorch, 2D and 3D, any size.

The ResNet generator's bottleneck interleaves residual CNN blocks with selective state-space layers
(I2I-Mamba puts them before blocks 1, 5 and 9 of nine). Each layer: LayerNorm + AdaLN, a linear
projection to an inner width and a gate, a depthwise 3×3 conv over the map, then the map flattened
along several scan orders (rows, columns, every axis of a volume, reversed; or a spiral), one
selective scan per order with its own input-dependent step sizes and projections (Mamba-2: a scalar
decay per head), un-flattened and averaged, gated by SiLU(z), projected back and added to the input.
The scan is ``scan.chunked_scan`` (matmuls, no kernels) unless ``scan="sequential"`` (the slow oracle),
so nothing needs ``mamba-ssm`` or a compiler and it runs on CPU and CUDA, in fp32 and bf16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.nets import blocks
from medtrans.nets.hybrid import MixerGenerator, token_modulated
from medtrans.nets.scan import SCANS, inverse_order, scan, scan_orders
from medtrans.registry import BACKBONES


class SelectiveScan2D(nn.Module):
    """One multi-directional selective SSM layer on a (B, C, *spatial) map, residual."""

    def __init__(
        self, spatial_dims: int, channels: int, d_state: int, expand: int, head_dim: int, orders: str,
        scan_method: str, chunk: int, film: blocks.FiLM | None,
    ) -> None:
        super().__init__()
        inner = expand * channels
        if inner % head_dim:
            raise MedtransError(None, f"expand·channels = {inner} is not divisible by head_dim {head_dim}",
                                "pick head_dim dividing expand × the bottleneck width")
        if scan_method not in SCANS:
            raise MedtransError(None, f"unknown scan {scan_method!r}", f"choose one of: {', '.join(SCANS)}")
        n_orders = len(scan_orders((2,) * spatial_dims, orders))  # validates the kind for this dimension
        self.orders, self.scan_method, self.chunk = orders, scan_method, chunk
        self.heads, self.head_dim, self.d_state = inner // head_dim, head_dim, d_state
        self.norm = nn.LayerNorm(channels)
        self.film = film
        self.in_proj = nn.Linear(channels, 2 * inner)
        self.local = blocks.conv(spatial_dims, inner, inner, 3, groups=inner)
        self.x_proj = nn.Parameter(torch.randn(n_orders, inner, self.heads + 2 * d_state) / math.sqrt(inner))
        # Mamba's initialisation: step sizes log-uniform in [1e-3, 0.1], decay rates 1..16
        dt = torch.exp(torch.empty(n_orders, self.heads).uniform_(math.log(1e-3), math.log(0.1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(n_orders, self.heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(n_orders, self.heads))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, channels)

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        b, channels, *spatial = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        u, z = self.in_proj(token_modulated(self.norm, tokens, self.film, embedding)).chunk(2, dim=-1)
        u = F.silu(self.local(u.transpose(1, 2).reshape(b, -1, *spatial))).flatten(2)  # (b, inner, L)
        orders = [o.to(x.device) for o in scan_orders(tuple(spatial), self.orders)]
        k, length = len(orders), u.shape[-1]
        seqs = torch.stack([u[:, :, o] for o in orders], dim=1).transpose(2, 3)  # (b, K, L, inner)
        dt, B, C = torch.einsum("bkld,kde->bkle", seqs, self.x_proj.to(seqs.dtype)).split(
            [self.heads, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt.to(self.dt_bias.dtype) + self.dt_bias[:, None])
        A = -torch.exp(self.A_log)[None].expand(b, k, self.heads).reshape(b * k, 1, self.heads)
        heads = seqs.reshape(b * k, length, self.heads, self.head_dim)
        y = scan(heads, dt.reshape(b * k, length, self.heads).to(heads.dtype), A,
                 B.reshape(b * k, length, -1), C.reshape(b * k, length, -1), self.scan_method, self.chunk)
        y = y + heads * self.D.to(heads.dtype)[None].expand(b, k, self.heads).reshape(b * k, 1, self.heads, 1)
        y = y.reshape(b, k, length, -1)
        merged = sum(y[:, i, inverse_order(o)] for i, o in enumerate(orders)) / k
        out = self.out_proj(self.out_norm(merged) * F.silu(z))
        return x + out.transpose(1, 2).reshape(x.shape)


@BACKBONES.register("mamba")
class MambaGenerator(MixerGenerator):
    """Mamba-like generator ``(B, C_in, *spatial) -> (B, C_out, *spatial)``.

    Args:
        width, n_blocks, n_down, norm, activation, out_activation, padding_mode: as ``resnet``.
        ssm_at: bottleneck blocks preceded by a state-space layer (I2I-Mamba: the 1st, 5th and 9th).
        d_state: state size N per head; expand: inner width / bottleneck width; head_dim: P.
        orders: ``cross`` (each axis fastest, both directions: 4 in 2D, 6 in 3D) | ``spiral`` (2D).
        scan: ``chunked`` (default) | ``sequential`` (the oracle: exact, very slow backward);
        chunk: chunk length of the chunked scan.
        upsample: ``transpose`` | ``resize`` in the decoder.
        time_dim: time embedding size (0: none): FiLM in the CNN blocks, AdaLN in the SSM layers.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        width: int = 64,
        n_blocks: int = 9,
        n_down: int = 2,
        ssm_at: tuple[int, ...] = (0, 4, 8),
        d_state: int = 16,
        expand: int = 2,
        head_dim: int = 32,
        orders: str = "cross",
        scan: str = "chunked",
        chunk: int = 64,
        norm: str = "instance",
        activation: str = "relu",
        out_activation: str | None = None,
        padding_mode: str = "reflect",
        upsample: str = "transpose",
        time_dim: int = 0,
    ) -> None:
        def make_layer(channels: int) -> nn.Module:
            return SelectiveScan2D(spatial_dims, channels, d_state, expand, head_dim, orders, scan, chunk,
                                   self.films(channels))

        super().__init__(spatial_dims, in_channels, out_channels, width, n_blocks, n_down, tuple(ssm_at),
                         make_layer, norm, activation, out_activation, padding_mode, upsample, time_dim)
