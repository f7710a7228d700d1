"""Supervised regression: one network, source → target, L1 or L2 (+ optional SSIM) loss.

The baseline every other method must beat: in SynthRAD2023 the top five MR→CT entries were regression
networks. One optimiser group ``g``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from medtrans.methods.base import Method
from medtrans.methods.losses import check_choice, reconstruction, ssim
from medtrans.methods.schedules import Noise
from medtrans.nets import build_backbone
from medtrans.registry import METHODS


@METHODS.register("regression")
class Regression(Method):
    """``loss`` (``l1`` | ``l2``) + ``ssim_weight`` · (1 − SSIM).

    Args:
        backbone: ``{"name": ..., **args}`` of the network.
        loss: ``l1`` (robust, the usual choice for sCT) or ``l2``.
        ssim_weight: weight of the (1 − SSIM) term; 0 turns it off.
        ssim_data_range: intensity range assumed by SSIM (2 for the plan's [-1, 1] space).
        masked: when the batch has a ``mask``, average the losses over the mask only (e.g. the body).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        loss: str = "l1",
        ssim_weight: float = 0.0,
        ssim_data_range: float = 2.0,
        masked: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.net = build_backbone(backbone or {"name": "unet"}, spatial_dims, in_channels, out_channels)
        self.loss = check_choice("regression loss", loss, ("l1", "l2"))
        self.ssim_weight = float(ssim_weight)
        self.ssim_data_range = float(ssim_data_range)
        self.masked = bool(masked)

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return self.net.parameters()

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        pred = self.net(batch["source"])
        mask = batch.get("mask") if self.masked else None
        terms = {self.loss: reconstruction(pred, batch["target"], self.loss, mask)}
        if self.ssim_weight > 0:
            similarity = ssim(pred, batch["target"], self.ssim_data_range, mask)
            terms["ssim"] = self.ssim_weight * (1.0 - similarity)
        return terms

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        return self.net(source)
