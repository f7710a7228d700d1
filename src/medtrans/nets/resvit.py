"""ResViT-like hybrid (Dalmaz, Yurt & Çukur, IEEE TMI 2022), trained from scratch, 2D and 3D, any size.

The ResNet generator's bottleneck (at 1/4 resolution) interleaves residual CNN blocks with "ART"
transformer paths: a strided conv to tokens (``token_stride`` bounds the token count: 256² → 64² →
32² = 1024 tokens by default), a sinusoidal position code computed for the actual token grid (so any
input size works; ResViT's learned table fixes 256²), pre-LN transformer layers with
``F.scaled_dot_product_attention`` and AdaLN from the time embedding, back up to the bottleneck grid,
concatenated with the input and compressed by a 1×1 conv. As in ResViT the transformer positions can
share one transformer (``share_transformer``). No pretrained weights (ResViT's ImageNet link is dead).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.nets import blocks
from medtrans.nets.hybrid import MixerGenerator, token_modulated
from medtrans.registry import BACKBONES


def sincos_positions(grid: tuple[int, ...], dim: int, device: torch.device) -> Tensor:
    """(prod(grid), dim) sinusoidal code of each token's integer coordinates, ``dim // (2·ndim)``
    frequencies per axis (the rest zero), computed for whatever grid the input gives."""
    per_axis = dim // (2 * len(grid))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(per_axis, device=device) / max(per_axis, 1))
    axes = (torch.arange(n, device=device, dtype=torch.float32) for n in grid)
    coords = torch.meshgrid(*axes, indexing="ij")
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * freqs
        parts += [angles.sin(), angles.cos()]
    code = torch.cat(parts, dim=1)
    return F.pad(code, (0, dim - code.shape[1]))


class TransformerLayer(nn.Module):
    """Pre-LN self-attention and MLP, each after an AdaLN (LayerNorm then the time FiLM)."""

    def __init__(
        self, d_model: int, heads: int, mlp_ratio: float, films: tuple[blocks.FiLM | None, ...],
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise MedtransError(None, f"d_model {d_model} is not divisible by heads {heads}",
                                "pick heads dividing d_model")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.film1, self.film2 = films
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        hidden = int(mlp_ratio * d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        b, length, d = x.shape
        h = token_modulated(self.norm1, x, self.film1, embedding)
        q, k, v = self.qkv(h).reshape(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, d)
        x = x + self.proj(attended)
        return x + self.mlp(token_modulated(self.norm2, x, self.film2, embedding))


class Transformer(nn.ModuleList):
    """A stack of ``TransformerLayer`` over (B, L, d_model) tokens."""

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, embedding)
        return x


class TransformerPath(nn.Module):
    """ResViT's ART transformer path: tokens, transformer, back to the grid, concat, 1×1 compression."""

    def __init__(
        self, spatial_dims: int, channels: int, d_model: int, token_stride: int, transformer: Transformer,
        norm: str, act: str, upsample: str, film: blocks.FiLM | None,
    ) -> None:
        super().__init__()
        self.embed = blocks.conv(spatial_dims, channels, d_model, token_stride, token_stride, padding=0)
        self.transformer = transformer
        self.unembed = (
            blocks.conv(spatial_dims, d_model, channels, 1) if token_stride == 1
            else blocks.upsampler(spatial_dims, d_model, channels, upsample, factor=token_stride)
        )
        self.compress = blocks.ConvNormAct(spatial_dims, 2 * channels, channels, 1, norm_name=norm, act=act)
        self.film = film

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        tokens = self.embed(x)
        grid = tuple(tokens.shape[2:])
        seq = tokens.flatten(2).transpose(1, 2)
        seq = seq + sincos_positions(grid, seq.shape[-1], seq.device).to(seq.dtype)
        seq = self.transformer(seq, embedding)
        back = self.unembed(seq.transpose(1, 2).reshape(tokens.shape))
        return blocks.modulated(self.compress, torch.cat([x, back], dim=1), self.film, embedding)


@BACKBONES.register("resvit")
class ResViT(MixerGenerator):
    """ResViT-like generator ``(B, C_in, *spatial) -> (B, C_out, *spatial)``.

    Args:
        width, n_blocks, n_down, norm, activation, out_activation, padding_mode: as ``resnet``.
        transformer_at: bottleneck blocks preceded by a transformer path (ResViT: the 1st and 6th).
        d_model, heads, layers, mlp_ratio: the transformer (ResViT's ViT-B: 768, 12, 12, 4).
        token_stride: stride of the conv making tokens from the bottleneck map (1: one token per voxel).
        share_transformer: every path uses the same transformer (ResViT's weight sharing).
        upsample: ``transpose`` | ``resize`` for the decoder and the tokens' way back.
        time_dim: time embedding size (0: none): FiLM in the CNN blocks, AdaLN in the transformer.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        width: int = 64,
        n_blocks: int = 9,
        n_down: int = 2,
        transformer_at: tuple[int, ...] = (0, 5),
        d_model: int = 256,
        heads: int = 4,
        layers: int = 2,
        mlp_ratio: float = 4.0,
        token_stride: int = 2,
        share_transformer: bool = True,
        norm: str = "instance",
        activation: str = "relu",
        out_activation: str | None = None,
        padding_mode: str = "reflect",
        upsample: str = "transpose",
        time_dim: int = 0,
    ) -> None:
        shared: list[Transformer] = []

        def transformer() -> Transformer:
            if share_transformer and shared:
                return shared[0]
            shared.append(Transformer(
                TransformerLayer(d_model, heads, mlp_ratio, (self.films(d_model), self.films(d_model)))
                for _ in range(layers)
            ))
            return shared[-1]

        def make_path(channels: int) -> nn.Module:  # called by MixerGenerator once self.films works
            return TransformerPath(spatial_dims, channels, d_model, token_stride, transformer(), norm,
                                   activation, upsample, self.films(channels))

        super().__init__(spatial_dims, in_channels, out_channels, width, n_blocks, n_down,
                         tuple(transformer_at), make_path, norm, activation, out_activation, padding_mode,
                         upsample, time_dim, multiple=token_stride)
