"""Conditional diffusion (DDPM, Ho et al. 2020) sampled with DDIM (Song et al. 2021) in few steps.

The network sees ``x_t`` with the source concatenated on the channel axis and the time t = i / T; it
learns ``prediction`` (``v`` by default, Salimans & Ho 2022: well conditioned at every noise level, so
the 10–20-step DDIM regime works). Sampling starts from pure noise at i = T and takes ``steps``
evenly spaced DDIM steps down to i = 0; ``eta`` = 0 is deterministic given the initial noise (which
still gives a valid spread over seeds), ``eta`` = 1 with ``steps`` = T is DDPM ancestral sampling
(the 1000-step reference). ``steps`` = 1 returns the first x̂_0 estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.methods.base import ExportSpec, Method, StepNetwork
from medtrans.methods.losses import check_choice, reconstruction
from medtrans.methods.schedules import DiffusionSchedule, Noise, randn_like
from medtrans.nets import build_backbone
from medtrans.registry import METHODS


@METHODS.register("ddpm")
class DDPM(Method):
    """Conditional DDPM / DDIM.

    Args:
        backbone: the denoiser, ``{"name": ..., **args}``; it gets ``1 + in_channels`` input channels
            (x_t and the source) and the time step.
        timesteps: T, the number of diffusion steps of training (1000 as in DDPM).
        beta_schedule: ``linear`` (1e-4 … 2e-2, DDPM / MONAI) or ``cosine`` (Nichol & Dhariwal).
        prediction: what the network outputs: ``v`` (default), ``eps`` or ``x0``.
        loss: ``l2`` (the DDPM objective) or ``l1``, on the prediction target.
        eta: DDIM stochasticity at sampling (0 deterministic per seed, 1 DDPM-like).
        steps: default number of sampling steps (``medtrans predict --steps`` overrides it).
        clip: x̂_0 is clipped to ±clip at every step (data lie in [-1, 1]); null turns it off.
    """

    stochastic = True
    default_steps = 20

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction: str = "v",
        loss: str = "l2",
        eta: float = 0.0,
        steps: int = 20,
        clip: float | None = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.net = build_backbone(backbone or {"name": "unet"}, spatial_dims, out_channels + in_channels,
                                  out_channels, time_conditioned=True)
        self.schedule = DiffusionSchedule(timesteps, beta_schedule, prediction=prediction, clip=clip)
        self.loss = check_choice("ddpm loss", loss, ("l1", "l2"))
        self.eta = float(eta)
        self.default_steps = int(steps)
        self.resolve_steps(self.default_steps)

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return self.net.parameters()

    def denoise(self, x: Tensor, source: Tensor, index: Tensor) -> Tensor:
        return self.net(torch.cat([x.to(source.dtype), source], dim=1), self.schedule.time(index))

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        source, target = batch["source"], batch["target"]
        index = self.schedule.sample_index(target.shape[0], target.device)
        eps = torch.randn_like(target)
        x = self.schedule.add_noise(target, eps, index)
        output = self.denoise(x, source, index)
        goal = self.schedule.target(target, eps, index)
        return {self.loss: reconstruction(output.float(), goal, self.loss)}

    def resolve_steps(self, steps: int | None) -> int | None:
        steps = super().resolve_steps(steps)
        self.schedule.indices(steps)  # refuses more steps than T
        return steps

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        shape = (source.shape[0], self.out_channels, *source.shape[2:])
        x = randn_like(torch.empty(shape, device=source.device), noise)
        indices = self.schedule.indices(steps or self.default_steps)
        for index, next_index in zip(indices[:-1], indices[1:], strict=True):
            batch_index = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
            output = self.denoise(x, source, batch_index).float()
            x = self.schedule.step(output, index, next_index, x, self.eta, noise)
        return x

    def export_network(self, source: Tensor) -> ExportSpec:
        """The denoiser ``net(x_i ‖ source, t = i / T)`` and the DDIM loop's schedule (ᾱ per index)."""
        return StepNetwork.spec(self.net, source, self.out_channels, {
            "kind": "ddpm_ddim", "time": "t = i / timesteps; sample from i = timesteps (noise) to 0",
            "timesteps": self.schedule.timesteps, "prediction": self.schedule.prediction,
            "clip": self.schedule.clip, "eta": self.eta, "default_steps": self.default_steps,
            "alpha_bar": [float(a) for a in self.schedule.alpha_bar]})
