"""Image → vector encoders (2D and 3D), e.g. the prior and posterior nets of a conditional VAE."""

from __future__ import annotations

from torch import Tensor, nn

from medtrans.nets import blocks


class GlobalEncoder(nn.Module):
    """``(B, C, *spatial) -> (B, out_features)``: stride-2 conv-norm-act blocks, global mean, linear.

    ``depth`` blocks halve the size each (width doubling, capped at ``max_width``); a global average
    over space makes it take any input size. ``norm`` defaults to ``none``: a norm over space
    (instance, group) removes each image's mean intensity, often the very global property a latent
    code must carry (the cVAE's bimodal toy has constant ±1 targets, which an instance norm erases).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_features: int, width: int = 16,
                 depth: int = 3, max_width: int = 128, norm: str = "none",
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for level in range(int(depth)):
            out = min(width * 2**level, max_width)
            layers.append(blocks.ConvNormAct(spatial_dims, channels, out, kernel_size=3, stride=2,
                                             norm_name=norm, act=activation))
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(2).mean(dim=2))
