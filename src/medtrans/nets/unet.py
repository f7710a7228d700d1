"""U-Net (Ronneberger et al. 2015) for 2D slices and 3D patches: the workhorse regression backbone.

Per level two 3×3 conv-norm-act blocks; 2× max-pool down, 2× transposed conv (or resize + conv) up,
skip connections by concatenation, a 1×1 head. Unlike the original, convolutions are padded ("same") so
the output has the input's size; inputs of any size work (padded to a multiple of 2**depth inside,
cropped back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.nets import blocks
from medtrans.registry import BACKBONES


class DoubleConv(nn.Sequential):
    """Two conv-norm-act blocks, with optional dropout between them; ``film`` modulates the first."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, act: str, dropout: float,
        film: blocks.FiLM | None = None,
    ) -> None:
        super().__init__(
            blocks.ConvNormAct(spatial_dims, in_channels, out_channels, norm_name=norm, act=act),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            blocks.ConvNormAct(spatial_dims, out_channels, out_channels, norm_name=norm, act=act),
        )
        self.film = film

    def forward(self, x: Tensor, embedding: Tensor | None = None) -> Tensor:
        first, dropout, second = self[0], self[1], self[2]
        return second(dropout(blocks.modulated(first, x, self.film, embedding)))


class Up(nn.Module):
    """2× upsampling (``blocks.upsampler``), concatenation with the skip, then a DoubleConv."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, act: str, dropout: float,
        film: blocks.FiLM | None = None, upsample: str = "transpose",
    ) -> None:
        super().__init__()
        self.up = blocks.upsampler(spatial_dims, in_channels, out_channels, upsample, kernel_size=2)
        self.block = DoubleConv(spatial_dims, 2 * out_channels, out_channels, norm, act, dropout, film)

    def forward(self, x: Tensor, skip: Tensor, embedding: Tensor | None = None) -> Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1), embedding)


@BACKBONES.register("unet")
class UNet(blocks.TimeConditioned, nn.Module):
    """U-Net ``(B, C_in, *spatial) -> (B, C_out, *spatial)``.

    Args:
        depth: number of 2× downsamplings (levels − 1).
        width: channels at the first level; doubled per level, capped at ``max_width``.
        widths: optional per-level channel counts, ``depth + 1`` of them (first level first); when
            given they replace ``width``·2**level and ``max_width`` (e.g. MONAI BasicUNet's
            ``[32, 32, 64, 128, 256]`` with ``depth=4``). A list of another length is an error.
        norm: ``instance`` | ``batch`` | ``group`` | ``none``.
        activation: ``relu`` | ``leaky_relu`` | ``gelu`` | ``silu`` | ``elu``.
        dropout: probability of dropout between the two convolutions of every block.
        out_activation: ``None`` (linear head) or ``tanh``.
        pad_mode: how inputs not divisible by 2**depth are padded before the net (then cropped).
        time_dim: size of the time embedding (0: no time conditioning); with it every block's first
            norm is followed by a FiLM scale/shift of ``net(x, t)``'s time step.
        upsample: ``transpose`` (2×2 transposed conv) | ``resize`` (nearest 2× then 3×3 conv: no
            checkerboard, see ``blocks.upsampler``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        depth: int = 4,
        width: int = 32,
        max_width: int = 512,
        norm: str = "instance",
        activation: str = "leaky_relu",
        dropout: float = 0.0,
        out_activation: str | None = None,
        pad_mode: str = "replicate",
        time_dim: int = 0,
        upsample: str = "transpose",
        widths: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = blocks.check_spatial_dims(spatial_dims)
        self.init_time(time_dim)
        self.depth = int(depth)
        self.pad_mode = pad_mode
        if widths is None:
            widths = [min(width * 2**level, max_width) for level in range(self.depth + 1)]
        elif len(widths) != self.depth + 1 or any(int(w) < 1 for w in widths):
            raise MedtransError(
                None, f"unet widths {list(widths)} must be {self.depth + 1} positive channel counts "
                f"(one per level at depth {self.depth})",
                f"give depth + 1 = {self.depth + 1} widths, or set depth to len(widths) - 1")
        widths = [int(w) for w in widths]
        self.widths = widths
        self.stem = DoubleConv(spatial_dims, in_channels, widths[0], norm, activation, dropout,
                               self.films(widths[0]))
        self.down = nn.ModuleList(
            DoubleConv(spatial_dims, widths[i], widths[i + 1], norm, activation, dropout,
                       self.films(widths[i + 1]))
            for i in range(self.depth)
        )
        self.up = nn.ModuleList(
            Up(spatial_dims, widths[i + 1], widths[i], norm, activation, dropout, self.films(widths[i]),
               upsample)
            for i in reversed(range(self.depth))
        )
        self.head = nn.Sequential(
            blocks.conv(spatial_dims, widths[0], out_channels, kernel_size=1),
            blocks.out_activation(out_activation),
        )
        self._pool = F.max_pool2d if spatial_dims == 2 else F.max_pool3d

    def forward(self, x: Tensor, t: Tensor | None = None, emb: Tensor | None = None) -> Tensor:
        embedding = self.embedding(t, emb, x.shape[0])
        x, size = blocks.pad_to_multiple(x, 2**self.depth, self.pad_mode)
        x = self.stem(x, embedding)
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(self._pool(x, 2), embedding)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(x, skip, embedding)
        return blocks.crop_to(self.head(x), size)
