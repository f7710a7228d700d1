"""ResNet generator (Johnson et al. 2016, as used by CycleGAN, Zhu et al. 2017), 2D and 3D.

c7s1-w → ``n_down`` stride-2 convs (width doubling) → ``n_blocks`` residual blocks → ``n_down``
transposed convs (or resize + conv) → c7s1-out. With the defaults (width 64, 9 blocks, 2 downsamplings)
this is the "resnet_9blocks" generator of the CycleGAN/pix2pix code. Inputs of any size work (padded to
a multiple of 2**n_down inside, cropped back).
"""

from __future__ import annotations

from torch import Tensor, nn

from medtrans.nets import blocks
from medtrans.registry import BACKBONES


class ResidualBlock(nn.Module):
    """x + (conv3-norm-act-[dropout]-conv3-norm)(x), reflection-padded."""

    def __init__(
        self, spatial_dims: int, channels: int, norm: str, act: str, dropout: float, padding_mode: str,
        film: blocks.FiLM | None = None,
    ) -> None:
        super().__init__()
        self.film = film
        self.body = nn.Sequential(
            blocks.ConvNormAct(
                spatial_dims, channels, channels, norm_name=norm, act=act, padding_mode=padding_mode
            ),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            blocks.conv(
                spatial_dims, channels, channels, bias=not blocks.has_norm(norm), padding_mode=padding_mode
            ),
            blocks.norm(norm, spatial_dims, channels),
        )

    def forward(self, x: Tensor, embedding: Tensor | None = None) -> Tensor:
        if embedding is None or self.film is None:
            return x + self.body(x)
        first, *rest = self.body
        h = blocks.modulated(first, x, self.film, embedding)
        for layer in rest:
            h = layer(h)
        return x + h


def encoder_layers(
    spatial_dims: int, in_channels: int, width: int, n_down: int, norm: str, act: str, padding_mode: str,
) -> list[nn.Module]:
    """c7s1-w then ``n_down`` stride-2 conv-norm-act (width doubling): the Johnson encoder."""
    layers: list[nn.Module] = [
        blocks.ConvNormAct(spatial_dims, in_channels, width, kernel_size=7, norm_name=norm, act=act,
                           padding_mode=padding_mode)
    ]
    for i in range(n_down):
        layers.append(
            blocks.ConvNormAct(spatial_dims, width * 2**i, width * 2 ** (i + 1), stride=2, norm_name=norm,
                               act=act)
        )
    return layers


def decoder_layers(
    spatial_dims: int, width: int, n_down: int, out_channels: int, norm: str, act: str, padding_mode: str,
    out_act: str | None, upsample: str,
) -> list[nn.Module]:
    """``n_down`` 2× upsamplings (width halving, norm, act) then c7s1-out: the Johnson decoder."""
    layers: list[nn.Module] = []
    for i in reversed(range(n_down)):
        layers += [
            blocks.upsampler(spatial_dims, width * 2 ** (i + 1), width * 2**i, upsample, kernel_size=3,
                             bias=not blocks.has_norm(norm)),
            blocks.norm(norm, spatial_dims, width * 2**i),
            blocks.activation(act),
        ]
    return layers + [
        blocks.conv(spatial_dims, width, out_channels, kernel_size=7, padding_mode=padding_mode),
        blocks.out_activation(out_act),
    ]


@BACKBONES.register("resnet")
class ResNetGenerator(blocks.TimeConditioned, nn.Module):
    """ResNet generator ``(B, C_in, *spatial) -> (B, C_out, *spatial)``.

    Args:
        width: channels of the first conv; doubled at each downsampling.
        n_blocks: residual blocks at the lowest resolution (9 in the original for 256² images).
        n_down: stride-2 downsamplings (2 in the original).
        norm: ``instance`` | ``batch`` | ``group`` | ``none``.
        activation: ``relu`` (original) | ``leaky_relu`` | ``gelu`` | ``silu`` | ``elu``.
        dropout: dropout inside residual blocks (0 in CycleGAN, 0.5 optional in pix2pix).
        out_activation: ``None`` (linear head) or ``tanh`` (original).
        padding_mode: padding of the 7×7 and residual convs (``reflect`` as in the original).
        time_dim: size of the time embedding (0: none); with it each residual block's first norm is
            followed by a FiLM scale/shift of ``net(x, t)``'s time step.
        upsample: ``transpose`` (3×3 stride-2 transposed conv, original) | ``resize`` (nearest 2× then
            3×3 conv: no checkerboard, see ``blocks.upsampler``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        width: int = 64,
        n_blocks: int = 9,
        n_down: int = 2,
        norm: str = "instance",
        activation: str = "relu",
        dropout: float = 0.0,
        out_activation: str | None = None,
        padding_mode: str = "reflect",
        time_dim: int = 0,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        blocks.check_spatial_dims(spatial_dims)
        self.init_time(time_dim)
        self.n_down = int(n_down)
        deep = width * 2**self.n_down
        self.model = nn.Sequential(
            *encoder_layers(spatial_dims, in_channels, width, self.n_down, norm, activation, padding_mode),
            *(ResidualBlock(spatial_dims, deep, norm, activation, dropout, padding_mode, self.films(deep))
              for _ in range(n_blocks)),
            *decoder_layers(spatial_dims, width, self.n_down, out_channels, norm, activation, padding_mode,
                            out_activation, upsample),
        )

    def forward(self, x: Tensor, t: Tensor | None = None, emb: Tensor | None = None) -> Tensor:
        embedding = self.embedding(t, emb, x.shape[0])
        x, size = blocks.pad_to_multiple(x, 2**self.n_down)
        if embedding is None:
            return blocks.crop_to(self.model(x), size)
        for layer in self.model:
            x = layer(x, embedding) if isinstance(layer, ResidualBlock) else layer(x)
        return blocks.crop_to(x, size)
