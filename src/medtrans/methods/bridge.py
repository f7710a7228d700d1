"""Brownian-bridge diffusion from the source to the target: SelfRDB, I2SB and BBDM in one method.

The process (``bridges.BridgeSchedule``) runs from the target at t = 0 to the source at t = 1, so
sampling starts at the source image (plus noise for SelfRDB's soft prior) instead of pure noise. The
network predicts x̂_0 (directly, or as the residual x_t − x̂_0) from x_t, the time and, by default
always, the source concatenated on the channel axis: an end point alone is not enough when source
and target intensities differ (I2SB #3: a bridge without the source did no better than pix2pix).
Sampling takes the analytic posterior step between any two indices (any sub-sequence for BBDM and
I2SB; SelfRDB's own N only).

Options from SelfRDB (Arslan et al. 2024):

- ``recursions`` R > 1: the network also takes its previous x̂_0 (zeros at first) as an extra channel
  and is applied R times per training step, with gradients through every pass; at sampling each item
  is refined until its mean |Δx̂_0| < ``consistency`` or R passes.
- ``adversarial`` > 0: a time-conditioned discriminator judges pairs (x_{t'}, x_t) — the posterior
  sample from x̂_0 against the one from the true x_0 — with the non-saturating loss; this adds the
  optimiser group ``d``.

The per-voxel std of several samples comes from the posterior noise (and SelfRDB's end-point noise).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.base import Method
from medtrans.methods.bridges import SAMPLING_STEPS, BridgeSchedule
from medtrans.methods.losses import check_choice, gan_loss, reconstruction
from medtrans.methods.schedules import Noise, broadcast
from medtrans.nets import build_backbone, build_discriminator
from medtrans.registry import DISCRIMINATORS, METHODS

PREDICTIONS = ("x0", "residual")


@METHODS.register("bridge")
class Bridge(Method):
    """Brownian-bridge translation with x̂_0 prediction.

    Args:
        backbone: the x̂_0 network; it gets x_t, the source (unless ``condition_source`` is off) and,
            with ``recursions`` > 1, the previous x̂_0, and the time.
        preset: ``selfrdb`` (soft prior, 10 steps; default), ``i2sb`` (β_max 0.3, T = 1000) or
            ``bbdm`` (m linear, T = 1000).
        timesteps: the training N (the preset's when None).
        steps: default sampling steps (the preset's: 10, 4, 4); SelfRDB only samples with N.
        eta: posterior noise scale at sampling (1: the posterior, 0: deterministic).
        prediction: ``x0`` (the network outputs x̂_0, SelfRDB's) or ``residual`` (it outputs x_t − x̂_0,
            BBDM's "grad" objective: near t = 0 x̂_0 inherits the detail of x_t, which keeps samples
            diverse); the preset's when None (``x0`` for selfrdb, ``residual`` for i2sb and bbdm).
        loss: ``l1`` (default, as BBDM and SelfRDB) or ``l2`` on x̂_0 (whatever ``prediction`` is).
        condition_source: concatenate the source to the network input (keep it on: off only to
            reproduce the I2SB #3 pitfall).
        recursions: R passes of self-consistent recursion (1 = off; SelfRDB uses 2).
        consistency: at sampling, stop the recursion once mean |Δx̂_0| falls below it.
        adversarial: weight of the non-saturating adversarial term (0 = off, no discriminator).
        discriminator: when ``adversarial`` > 0, ``{"name": ..., **args}``, default ``timed_patchgan``
            (D(cat(x_{t'}, x_t), t)); one without a time input (``patchgan``) gets t as a constant channel.
        beta_max, max_var, gamma: the I2SB, BBDM and SelfRDB schedule parameters.
        clip: x̂_0 is clipped to ±clip before each sampling step (data lie in [-1, 1]); null = off.
        betas: Adam betas of both groups when ``adversarial`` > 0 (SelfRDB's (0.5, 0.9)).
    """

    stochastic = True
    default_steps = 10

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        preset: str = "selfrdb",
        timesteps: int | None = None,
        steps: int | None = None,
        eta: float = 1.0,
        prediction: str | None = None,
        loss: str = "l1",
        condition_source: bool = True,
        recursions: int = 1,
        consistency: float = 0.01,
        adversarial: float = 0.0,
        discriminator: dict[str, Any] | None = None,
        beta_max: float = 0.3,
        max_var: float = 1.0,
        gamma: float = 1.0,
        clip: float | None = 1.0,
        betas: tuple[float, float] = (0.5, 0.9),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if in_channels < out_channels:
            raise MedtransError(None, f"a bridge needs the source as its end point: {in_channels} source "
                                f"channel(s) for {out_channels} target channel(s)",
                                "give at least as many source modalities as target channels")
        self.schedule = BridgeSchedule(preset, timesteps, beta_max, max_var, gamma)
        self.loss = check_choice("bridge loss", loss, ("l1", "l2"))
        default_prediction = "x0" if self.schedule.preset == "selfrdb" else "residual"
        self.prediction = check_choice("bridge prediction", prediction or default_prediction, PREDICTIONS)
        self.eta = float(eta)
        self.condition_source = bool(condition_source)
        self.recursions = int(recursions)
        if self.recursions < 1:
            raise MedtransError(None, f"bridge recursions {recursions}", "use 1 (off) or more")
        self.consistency = float(consistency)
        self.adversarial = float(adversarial)
        self.clip = clip
        self.betas = (float(betas[0]), float(betas[1]))
        channels = out_channels + (in_channels if self.condition_source else 0)
        channels += out_channels if self.recursions > 1 else 0
        self.net = build_backbone(backbone or {"name": "unet"}, spatial_dims, channels, out_channels,
                                  time_conditioned=True)
        if self.adversarial > 0:
            self.groups = ("g", "d")
            spec = {"name": discriminator} if isinstance(discriminator, str) else dict(discriminator or {})
            spec.setdefault("name", "timed_patchgan")
            # a discriminator without a time input (plain patchgan) gets t as a constant channel
            self.timed = "t" in inspect.signature(DISCRIMINATORS.get(spec["name"]).forward).parameters
            self.discriminator = build_discriminator(spec, spatial_dims,
                                                     2 * out_channels + (0 if self.timed else 1))
        elif discriminator is not None:
            raise MedtransError(None, "a discriminator is configured but the bridge's adversarial term "
                                "is off", "set method.args.adversarial (e.g. 0.1), or drop the "
                                "discriminator block")
        preset_steps = SAMPLING_STEPS[preset] if self.schedule.skips else self.schedule.timesteps
        self.default_steps = int(steps or min(preset_steps, self.schedule.timesteps))
        self.resolve_steps(self.default_steps)
        # (source, detached fake x_{t'}, real x_{t'}, x_t, t) from the g step, for the d step
        self._pair: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None

    # ------------------------------------------------------------------------------- groups
    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return (self.net if group == "g" else self.discriminator).parameters()

    def optimizer_settings(self, group: str) -> dict[str, Any]:
        return {"betas": self.betas} if self.adversarial > 0 else {}

    def resolve_steps(self, steps: int | None) -> int | None:
        steps = super().resolve_steps(steps)
        self.schedule.indices(steps)  # refuses more than N, and SelfRDB any count but N
        return steps

    def evaluations(self, steps: int | None) -> int:
        """Network passes per sample: at most ``recursions`` per step."""
        return int(steps or self.default_steps) * self.recursions

    # ------------------------------------------------------------------------------- network
    def end_point(self, source: Tensor) -> Tensor:
        """y, the bridge's source end: the first ``out_channels`` source channels."""
        return source[:, : self.out_channels].float()

    def predict(self, x: Tensor, source: Tensor, t: Tensor, previous: Tensor | None = None) -> Tensor:
        """x̂_0 from one network pass (``previous``: the recursion channel)."""
        parts = [x.to(source.dtype)]
        if self.condition_source:
            parts.append(source)
        if self.recursions > 1:
            parts.append(torch.zeros_like(x) if previous is None else previous.to(source.dtype))
        output = self.net(torch.cat(parts, dim=1), t).float()
        return output if self.prediction == "x0" else x.float() - output

    def recursive_predict(self, x: Tensor, source: Tensor, t: Tensor) -> Tensor:
        """Training: R passes, each fed the previous estimate, gradients through all of them."""
        estimate = None
        for _ in range(self.recursions):
            estimate = self.predict(x, source, t, estimate)
        return estimate

    def refine(self, x: Tensor, source: Tensor, t: Tensor) -> Tensor:
        """Sampling: recursion until each item's mean |Δx̂_0| < ``consistency`` (or R passes).

        The test is per item and a converged item is frozen, so an item's result does not depend on
        which others share its batch.
        """
        estimate = self.predict(x, source, t)
        previous = torch.zeros_like(estimate)
        for _ in range(self.recursions - 1):
            change = (estimate - previous).abs().flatten(1).mean(1)
            active = change >= self.consistency
            if not bool(active.any()):
                break
            fresh = self.predict(x, source, t, estimate)
            previous = estimate
            estimate = torch.where(broadcast(active, estimate).bool(), fresh, estimate)
        return estimate

    # ------------------------------------------------------------------------------- training
    def _adversarial_index(self, index: Tensor) -> Tensor:
        """t' of the discriminator's pairs: one default sampling step before t (≥ 0)."""
        stride = max(self.schedule.timesteps // self.default_steps, 1)
        return (index - stride).clamp(min=0)

    def _pair_at(self, x0: Tensor, x: Tensor, y: Tensor, index: Tensor, previous: Tensor) -> Tensor:
        """Posterior samples x_{t'} from (x_t, x0, y), one index pair per item."""
        return torch.cat([self.schedule.step(x0[k: k + 1], int(index[k]), int(previous[k]), x[k: k + 1],
                                             y[k: k + 1]) for k in range(x.shape[0])])

    def _judge(self, x_next: Tensor, x: Tensor, t: Tensor) -> Tensor:
        if self.timed:
            return self.discriminator(torch.cat([x_next, x], dim=1), t)
        t_map = broadcast(t, x).expand_as(x[:, :1])
        return self.discriminator(torch.cat([x_next, x, t_map], dim=1))

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        source, target = batch["source"], batch["target"].float()
        if group == "d":
            return self._discriminator_losses(source, target)
        y = self.end_point(source)
        index = self.schedule.sample_index(target.shape[0], target.device)
        x = self.schedule.q_sample(target, y, index, torch.randn_like(target))
        t = self.schedule.time(index).to(target.device)
        estimate = self.recursive_predict(x, source, t)
        terms = {self.loss: reconstruction(estimate, target, self.loss)}
        if self.adversarial > 0:
            previous = self._adversarial_index(index)
            fake = self._pair_at(estimate, x, y, index, previous)
            real = self._pair_at(target, x, y, index, previous)
            self._pair = (source, fake.detach(), real, x, t)
            terms["gan"] = self.adversarial * gan_loss(self._judge(fake, x, t), True, "vanilla")
        return terms

    def _discriminator_losses(self, source: Tensor, target: Tensor) -> dict[str, Tensor]:
        if self._pair is None or self._pair[0] is not source:
            with torch.no_grad():  # d stepped without this batch's g step: make the pair now
                self.losses({"source": source, "target": target}, "g")
        _, fake, real, x, t = self._pair
        self._pair = None
        return {"real": gan_loss(self._judge(real, x, t), True, "vanilla"),
                "fake": gan_loss(self._judge(fake, x, t), False, "vanilla")}

    # ------------------------------------------------------------------------------- sampling
    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        batch = source.shape[0]

        def estimate(x: Tensor, index: int) -> Tensor:
            t = self.schedule.time(torch.full((batch,), index)).to(source.device)
            x0 = self.refine(x, source, t)
            return x0.clamp(-self.clip, self.clip) if self.clip is not None else x0

        return self.schedule.run(estimate, self.end_point(source), steps or self.default_steps, self.eta,
                                 noise)
