"""Time-conditioned PatchGAN: the discriminator of adversarial diffusion (DDGAN / SynDiff).

It judges a denoising step, the pair (x_t, x_{t+1}) concatenated on the channel axis (and the source
when the method asks), at the step's noise level: the layers of :class:`~medtrans.nets.patchgan.PatchGAN`,
with a sinusoidal time embedding feeding a FiLM scale/shift after the norm of each strided block (the
same ``TimeEmbedding``/``FiLM`` as the backbones). Without a norm (the default: the R1 penalty and the
DDGAN discriminator use none) FiLM modulates the conv output directly.
"""

from __future__ import annotations

from torch import Tensor, nn

from medtrans.nets import blocks
from medtrans.nets.patchgan import PatchGAN
from medtrans.registry import DISCRIMINATORS


@DISCRIMINATORS.register("timed_patchgan")
class TimedPatchGAN(blocks.TimeConditioned, PatchGAN):
    """``D(x, t)``: (B, C_in, *spatial) and t ∈ [0, 1] of shape (B,) → (B, 1, *patches) logits.

    Args:
        n_layers, width, norm: as for ``patchgan``.
        time_dim: size of the time embedding (> 0).
    """

    def __init__(self, spatial_dims: int, in_channels: int, n_layers: int = 3, width: int = 64,
                 norm: str = "none", time_dim: int = 128) -> None:
        PatchGAN.__init__(self, spatial_dims, in_channels, n_layers, width, norm)
        if time_dim < 1:
            raise ValueError("a time-conditioned discriminator needs time_dim > 0")
        self.init_time(time_dim)
        blocks_out = [layer[0].out_channels for layer in self.model if isinstance(layer, blocks.ConvNormAct)]
        self.film_layers = nn.ModuleList(self.films(channels) for channels in blocks_out)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        if t is None:
            raise ValueError("timed_patchgan judges a diffusion step: give its time t")
        embedding = self.embedding(t, None, x.shape[0])
        films = iter(self.film_layers)
        for layer in self.model:
            x = blocks.modulated(layer, x, next(films), embedding) if isinstance(
                layer, blocks.ConvNormAct) else layer(x)
        return x
