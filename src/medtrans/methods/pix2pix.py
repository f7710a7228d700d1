"""pix2pix (Isola et al. 2017): a generator trained against a PatchGAN conditioned on the source.

Groups ``g`` then ``d`` each step. ``g``: fool the discriminator on (source, fake) plus λ·L1 to the
target; the fake is cached (detached) for ``d``. ``d``: real pairs → 1, fake pairs → 0, the sum halved
as in the original (slows D relative to G). Adam betas (0.5, 0.999) as in the paper.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.methods.base import Method
from medtrans.methods.losses import GAN_LOSSES, check_choice, gan_loss, reconstruction
from medtrans.methods.schedules import Noise
from medtrans.nets import build_backbone, build_discriminator
from medtrans.registry import METHODS


@METHODS.register("pix2pix")
class Pix2Pix(Method):
    """Conditional GAN for paired translation.

    Args:
        backbone: the generator, ``{"name": ..., **args}`` (the paper's is a U-Net).
        discriminator: ``{"name": "patchgan", **args}``; it sees source and image concatenated.
        gan_loss: ``lsgan`` (least squares, stabler) or ``vanilla`` (cross-entropy, the paper's).
        lambda_l1: weight of the L1 term (100 in the paper).
        masked: when the batch has a ``mask``, average the L1 term over the mask only.
        betas: Adam betas of both groups.
    """

    groups = ("g", "d")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        gan_loss: str = "lsgan",
        lambda_l1: float = 100.0,
        masked: bool = False,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.generator = build_backbone(backbone or {"name": "unet"}, spatial_dims, in_channels, out_channels)
        self.discriminator = build_discriminator(
            discriminator or {"name": "patchgan"}, spatial_dims, in_channels + out_channels
        )
        self.gan_loss = check_choice("gan_loss", gan_loss, GAN_LOSSES)
        self.lambda_l1 = float(lambda_l1)
        self.masked = bool(masked)
        self.betas = (float(betas[0]), float(betas[1]))
        self._fake: tuple[Tensor, Tensor] | None = None  # (source it came from, detached fake)

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return (self.generator if group == "g" else self.discriminator).parameters()

    def optimizer_settings(self, group: str) -> dict[str, Any]:
        return {"betas": self.betas}

    def _judge(self, source: Tensor, image: Tensor) -> Tensor:
        return self.discriminator(torch.cat([source, image.to(source.dtype)], dim=1))

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        source, target = batch["source"], batch["target"]
        if group == "g":
            fake = self.generator(source)
            self._fake = (source, fake.detach())
            return {
                "gan": gan_loss(self._judge(source, fake), True, self.gan_loss),
                "l1": self.lambda_l1
                * reconstruction(fake, target, "l1", batch.get("mask") if self.masked else None),
            }
        if self._fake is not None and self._fake[0] is source:
            fake = self._fake[1]
        else:  # d stepped without the g step of this batch: make the fake now
            with torch.no_grad():
                fake = self.generator(source)
        self._fake = None
        return {
            "real": 0.5 * gan_loss(self._judge(source, target), True, self.gan_loss),
            "fake": 0.5 * gan_loss(self._judge(source, fake), False, self.gan_loss),
        }

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        return self.generator(source)
