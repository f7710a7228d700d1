"""Conditional normalizing flow (Glow, Kingma & Dhariwal 2018; SRFlow, Lugmayr et al. 2020; cINN,
Ardizzone et al. 2019; Denker et al. 2021) for translation: the exact-likelihood option.

The target is mapped by a multi-scale flow (``nets.flow_layers.ConditionalGlow``: L levels of squeeze
and K × (ActNorm, invertible 1×1 conv, affine coupling), conditional Gaussian priors on the split-off
halves) to ε ~ N(0, I); every coupling and prior sees the source's features at its scale, from the
backbone followed by a stride-2 pyramid. Training minimises the negative log-likelihood in bits/dim
(with a little Gaussian dequantisation noise, since the data are floats), optionally plus an L1 term on
the temperature-0 sample (SRFlow). Sampling draws ε ~ N(0, τ² I) and inverts once: one pass per
sample, so several samples give a std map directly (τ scales it: calibrate τ on validation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.base import Method
from medtrans.methods.losses import check_choice
from medtrans.methods.schedules import Noise, randn_like
from medtrans.nets import build_backbone
from medtrans.nets.blocks import crop_to, pad_to_multiple
from medtrans.nets.flow_layers import ConditionalGlow
from medtrans.registry import METHODS


def full_precision(x: Tensor) -> AbstractContextManager[Any]:
    """Autocast off: the flow's log-det sums thousands of per-voxel log-scales and its inverse must undo
    the forward exactly, which bf16 (8 bits of mantissa) cannot do, so the flow always runs in fp32."""
    return torch.autocast(x.device.type, enabled=False)


@METHODS.register("nflow")
class NormalizingFlow(Method):
    """Conditional Glow with source-conditioned couplings and priors.

    Args:
        backbone: the source encoder, ``in_channels → cond_channels`` features at full resolution.
        levels: L, number of squeeze/split levels (inputs are padded to a multiple of 2**L).
        depth: K, flow steps per level.
        hidden: width of each coupling's scale/shift CNN.
        cond_channels: width of the source features fed to every coupling and prior.
        clamp: bound of each coupling's log-scale, s = clamp · sigmoid(raw − 2) ∈ (0, clamp) (forward
            expands only, so sampling's inverse only contracts), and of the priors' log-std (±clamp).
        temperature: τ of the sampling prior N(0, τ² I); 0 gives the deterministic mode-like sample.
        dequant_std: std of the Gaussian noise added to the target in training (2.5 % of [-1, 1]): the
            clipped target has point masses (background exactly −1) that a tiny noise turns into
            near-singular densities (the flow spends its capacity on them); 0.05 gave a far better
            τ = 0 sample on the phantom (docs/MODELS.md).
        l1_weight: weight of the L1 term on the temperature-0 sample (0: pure likelihood).
    """

    stochastic = True
    default_steps = None

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        levels: int = 3,
        depth: int = 8,
        hidden: int = 64,
        cond_channels: int = 16,
        clamp: float = 2.0,
        temperature: float = 0.8,
        dequant_std: float = 0.05,
        l1_weight: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        for name, value in (("levels", levels), ("depth", depth), ("hidden", hidden),
                            ("cond_channels", cond_channels)):
            if int(value) < 1:
                raise MedtransError(None, f"nflow {name} is {value}", f"use {name} >= 1")
        for name, value in (("clamp", clamp), ("temperature", temperature), ("dequant_std", dequant_std),
                            ("l1_weight", l1_weight)):
            if float(value) < 0 or (name == "clamp" and float(value) == 0):
                raise MedtransError(None, f"nflow {name} is {value}", f"use a positive {name}")
        self.levels = int(levels)
        self.temperature = float(temperature)
        self.dequant_std = float(dequant_std)
        self.l1_weight = float(l1_weight)
        encoder = build_backbone(backbone or {"name": "unet"}, spatial_dims, in_channels, int(cond_channels))
        self.flow = ConditionalGlow(spatial_dims, out_channels, int(cond_channels), encoder, self.levels,
                                    int(depth), int(hidden), float(clamp))

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return self.parameters()

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return pad_to_multiple(x.float(), 2**self.levels)

    def bits_per_dim(self, eps: Tensor, logdet: Tensor) -> Tensor:
        """−log p(x | y) / (D ln 2) per item, with log p = log N(ε; 0, I) + log|det J| (D = voxels of x)."""
        dims = eps[0].numel()
        log_prior = -0.5 * (eps.flatten(1) ** 2).sum(1) - 0.5 * dims * math.log(2 * math.pi)
        return -(log_prior + logdet) / (dims * math.log(2))

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        with full_precision(batch["target"]):
            source, _ = self._pad(batch["source"])
            target, size = self._pad(batch["target"])
            features = self.flow.features(source)
            x = target + self.dequant_std * torch.randn_like(target)
            eps, logdet = self.flow(x, features)
            terms = {"nll_bpd": self.bits_per_dim(eps, logdet).mean()}
            if self.l1_weight > 0:
                mode = crop_to(self.flow.inverse(torch.zeros_like(eps), features), size)
                terms["l1"] = self.l1_weight * (mode - batch["target"].float()).abs().mean()
        return terms

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        with full_precision(source):
            padded, size = self._pad(source)
            shape = (source.shape[0], self.out_channels, *padded.shape[2:])
            eps = self.temperature * randn_like(padded.new_empty(shape), noise)
            return crop_to(self.flow.inverse(eps, padded), size)
