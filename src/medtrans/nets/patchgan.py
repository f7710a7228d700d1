"""PatchGAN discriminator (Isola et al. 2017), 2D and 3D: one real/fake logit per overlapping patch.

C64-C128-C256-C512 with 4×4 kernels (the "n_layers=3" default of pix2pix and CycleGAN, a 70×70
receptive field in 2D), LeakyReLU 0.2, no norm on the first layer, channels capped at 8× the width.
The output is a map of logits; losses average it. Each spatial axis must be at least about
2**n_layers · 3 voxels long (e.g. ≥ 24 for n_layers=3, ≥ 12 for n_layers=2) to leave a patch map.
"""

from __future__ import annotations

from torch import Tensor, nn

from medtrans.nets import blocks
from medtrans.registry import DISCRIMINATORS


@DISCRIMINATORS.register("patchgan")
class PatchGAN(nn.Module):
    """PatchGAN ``(B, C_in, *spatial) -> (B, 1, *patches)`` (logits, no sigmoid).

    Args:
        n_layers: stride-2 convolutions (the receptive field grows with it).
        width: channels of the first layer; doubled per layer up to 8× width.
        norm: ``instance`` | ``batch`` | ``group`` | ``none``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, n_layers: int = 3, width: int = 64, norm: str = "instance"
    ) -> None:
        super().__init__()
        blocks.check_spatial_dims(spatial_dims)
        layers: list[nn.Module] = [
            blocks.conv(spatial_dims, in_channels, width, kernel_size=4, stride=2, padding=1),
            blocks.activation("leaky_relu"),
        ]
        channels = width
        for n in range(1, n_layers + 1):
            out = width * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers.append(
                blocks.ConvNormAct(
                    spatial_dims,
                    channels,
                    out,
                    kernel_size=4,
                    stride=stride,
                    padding=1,
                    norm_name=norm,
                    act="leaky_relu",
                )
            )
            channels = out
        layers.append(blocks.conv(spatial_dims, channels, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
