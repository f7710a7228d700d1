"""Conditional flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) for translation.

Two designs behind one method (``start``):

- ``noise`` (MOTFM, MONAI RFlow, the SynthRAD2025 FM entry): the path runs from the target at t = 0
  to Gaussian noise at t = 1, the source is concatenated to the network input, and sampling
  integrates the learned velocity from noise with ``solver`` (Euler, midpoint or Heun). Each seed
  gives another sample, so several samples give a std map.
- ``source`` (FM "direct", I2SB's OT-ODE): the path runs from the target to the *source* image, with
  a Brownian-bridge spread ``sigma`` √(t (1 − t)) around the straight line; the source is also
  concatenated. Sampling starts at the source and takes the bridge's exact posterior steps (fresh
  noise each step); ``sigma`` = 0 makes it deterministic (no uncertainty map), so the default is 0.2.

Pairs are never re-matched inside a batch (no minibatch OT): torchcfm #117 shows OT coupling
destroys the pairing of conditional translation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.base import ExportSpec, Method, StepNetwork
from medtrans.methods.losses import check_choice, reconstruction
from medtrans.methods.schedules import FlowSchedule, Noise
from medtrans.nets import build_backbone
from medtrans.registry import METHODS

SOLVERS = ("euler", "midpoint", "heun")


@METHODS.register("flow")
class FlowMatching(Method):
    """Conditional flow matching.

    Args:
        backbone: the velocity network; it gets ``1 + in_channels`` channels (x_t and the source) and t.
        start: ``noise`` (default) or ``source`` (a noisy bridge from the source image).
        sigma: ``start: source`` only: the bridge's spread (0 gives a deterministic ODE); default 0.2.
        time_sampling: ``logit_normal`` (default for noise: trains mostly on mid t) or ``uniform``
            (default for source).
        solver: ``euler`` (1 evaluation a step), ``midpoint`` or ``heun`` (2) for ``start: noise``;
            ``start: source`` always takes the bridge's posterior (Euler-like) step.
        steps: default number of sampling steps (``--steps`` overrides; 1 is a one-pass preview).
    """

    stochastic = True
    default_steps = 10

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        start: str = "noise",
        sigma: float | None = None,
        time_sampling: str | None = None,
        solver: str = "euler",
        steps: int = 10,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if start == "noise" and sigma:
            raise MedtransError(None, "flow sigma applies to start: source only",
                                "drop sigma, or set start: source")
        sigma = (0.2 if start == "source" else 0.0) if sigma is None else float(sigma)
        self.schedule = FlowSchedule(start, sigma, time_sampling)
        self.solver = check_choice("flow solver", solver, SOLVERS)
        if start == "source" and solver != "euler":
            raise MedtransError(None, f"flow solver {solver!r} with start: source",
                                "the source bridge takes its own posterior step: use solver: euler")
        self.stochastic = start == "noise" or sigma > 0
        self.net = build_backbone(backbone or {"name": "unet"}, spatial_dims, out_channels + in_channels,
                                  out_channels, time_conditioned=True)
        self.default_steps = int(steps)
        self.resolve_steps(self.default_steps)

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return self.net.parameters()

    def velocity(self, x: Tensor, source: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).expand(x.shape[0])
        return self.net(torch.cat([x.to(source.dtype), source], dim=1), t).float()

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        source, target = batch["source"], batch["target"]
        t = self.schedule.sample_time(target.shape[0], target.device)
        eps = torch.randn_like(target)
        x = self.schedule.add_noise(target, eps, t, source)
        goal = self.schedule.target(target, eps, source)
        return {"l2": reconstruction(self.velocity(x, source, t), goal, "l2")}

    def evaluations(self, steps: int | None) -> int:
        steps = int(steps or self.default_steps)
        if self.solver == "euler":
            return steps
        return 2 * steps if self.solver == "midpoint" else 2 * steps - 1

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        shape = (source.shape[0], self.out_channels, *source.shape[2:])
        x = self.schedule.prior(source, shape, noise)
        times = self.schedule.times(steps or self.default_steps)
        for t, t_next in zip(times[:-1], times[1:], strict=True):
            v = self.velocity(x, source, t)
            if self.schedule.start == "source":
                x = self.schedule.bridge_step(v, t, t_next, x, source, noise)
            elif self.solver == "euler":
                x = x + (t_next - t) * v
            elif self.solver == "midpoint":
                half = t + (t_next - t) / 2
                x = x + (t_next - t) * self.velocity(x + (half - t) * v, source, half)
            else:  # Heun: trapezoid of the velocities at both ends (Euler on the last step, t = 0)
                guess = x + (t_next - t) * v
                if t_next > 0:
                    guess = x + (t_next - t) * (v + self.velocity(guess, source, t_next)) / 2
                x = guess
        return x

    def export_network(self, source: Tensor) -> ExportSpec:
        """The velocity network ``net(x_t ‖ source, t)`` and what its integration loop needs."""
        return StepNetwork.spec(self.net, source, self.out_channels, {
            "kind": "flow", "time": "t = 1 (start) to 0 (target), evenly spaced; velocity dx/dt",
            "start": self.schedule.start, "sigma": self.schedule.sigma, "solver": self.solver,
            "default_steps": self.default_steps})
