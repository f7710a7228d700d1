"""The scaffold shared by the ResViT-like and Mamba-like backbones: a ResNet generator whose bottleneck
interleaves residual CNN blocks with global "mixers" (transformer or state-space layers).

ResViT (Dalmaz et al., IEEE TMI 2022) and I2I-Mamba (Atli et al. 2024) are both the pix2pix ResNet
generator with some of the nine bottleneck residual blocks preceded by a global layer; only the layer
differs, so the encoder, decoder, padding and time conditioning live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.nets import blocks
from medtrans.nets.resnet import ResidualBlock, decoder_layers, encoder_layers


def token_modulated(norm: nn.Module, x: Tensor, film: blocks.FiLM | None, embedding: Tensor | None) -> Tensor:
    """AdaLN: ``norm(x)`` of tokens (B, L, D), then the time FiLM's scale/shift per feature, if any."""
    h = norm(x)
    if film is None or embedding is None:
        return h
    return film(h.transpose(1, 2), embedding).transpose(1, 2)


class MixerGenerator(blocks.TimeConditioned, nn.Module):
    """Encoder (c7s1-w, ``n_down`` stride-2 convs) → bottleneck → decoder, ``net(x, t=None, emb=None)``.

    The bottleneck has ``n_blocks`` residual CNN blocks (FiLM-modulated when time-conditioned); before
    block i for each i in ``mixer_at`` sits ``make_mixer(channels)``, a module ``(x, embedding) -> x``
    at the bottleneck's width. Inputs are padded to a multiple of ``2**n_down · multiple`` and cropped.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, width: int, n_blocks: int, n_down: int,
        mixer_at: Sequence[int], make_mixer: Callable[[int], nn.Module], norm: str, activation: str,
        out_activation: str | None, padding_mode: str, upsample: str, time_dim: int, multiple: int = 1,
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__()
        self.spatial_dims = blocks.check_spatial_dims(spatial_dims)
        self.init_time(time_dim)
        bad = sorted(set(mixer_at) - set(range(n_blocks)))
        if bad:
            raise MedtransError(None, f"mixer positions {bad} outside the {n_blocks} bottleneck blocks",
                                f"use positions in 0..{n_blocks - 1}")
        self.multiple = 2**n_down * multiple
        self.pad_mode = pad_mode
        deep = width * 2**n_down
        self.encoder = nn.Sequential(
            *encoder_layers(spatial_dims, in_channels, width, n_down, norm, activation, padding_mode))
        layers: list[nn.Module] = []
        for i in range(n_blocks):
            if i in mixer_at:
                layers.append(make_mixer(deep))
            layers.append(
                ResidualBlock(spatial_dims, deep, norm, activation, 0.0, padding_mode, self.films(deep)))
        self.bottleneck = nn.ModuleList(layers)
        self.decoder = nn.Sequential(*decoder_layers(
            spatial_dims, width, n_down, out_channels, norm, activation, padding_mode, out_activation,
            upsample))

    def forward(self, x: Tensor, t: Tensor | None = None, emb: Tensor | None = None) -> Tensor:
        embedding = self.embedding(t, emb, x.shape[0])
        x, size = blocks.pad_to_multiple(x, self.multiple, self.pad_mode)
        x = self.encoder(x)
        for layer in self.bottleneck:
            x = layer(x, embedding)
        return blocks.crop_to(self.decoder(x), size)
