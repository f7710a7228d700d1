"""Adversarial diffusion in T = 4 steps: conditional DDGAN (paired) and SynDiff (unpaired).

DDGAN (Xiao et al., ICLR 2022): with steps this large the reverse conditional is multimodal, so a
generator G(x_{t+1} ‖ condition, t, z) predicts x̂_0 (z ~ N(0, I_nz) through a mapping MLP into the
backbone's time embedding), the DDPM posterior q(x_t | x_{t+1}, x̂_0) turns it into a fake x_t, and a
time-conditioned discriminator D(x_t ‖ x_{t+1}, t) tells it from a real x_t. Non-saturating loss
(softplus), lazy R1 on the real x_t, plus λ_L1·|x̂_0 − x_0|.

SynDiff (Özbey et al., IEEE TMI 2023) trains it without pairs: A is the source domain, B the target.
Non-diffusive generators G_AB, G_BA (ResNets) make a pseudo-B from real A and a pseudo-A from real B;
the diffusive generator of B is conditioned on the pseudo-A made from the same real B it must denoise
(and the one of A on G_AB(real A)), so its L1 term is valid without pairs; cycle losses and PatchGAN
discriminators on the non-diffusive outputs tie G_AB and G_BA to the data. Eight networks in all.

At test time only the diffusive generator of the target (``diffusive_b``) runs, conditioned on the
real source, in exactly T network calls from x_T ~ N(0, I); the non-diffusive generators only serve
unpaired training (SynDiff #52). The choice is logged once and readable as ``inference_generator``.
Samples use the trainer's EMA weights like every sampler (the anchor swaps them in only at saving).
SynDiff's ``set_detect_anomaly(True)`` in the training loop (a severe slow-down) is not reproduced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.base import Method
from medtrans.methods.losses import check_choice, gan_loss, reconstruction
from medtrans.methods.schedules import Noise, randn_like
from medtrans.methods.syndiff_schedule import AdversarialSchedule
from medtrans.nets import build_backbone, build_discriminator
from medtrans.registry import METHODS

log = logging.getLogger(__name__)


class DiffusiveGenerator(nn.Module):
    """x̂_0 = net(x_{t+1} ‖ condition, t, emb = mapping(z)): a time-conditioned backbone whose extra
    embedding carries the latent code (a 3-layer MLP, as DDGAN's mapping network, into ``time_dim``)."""

    def __init__(self, spec: dict[str, Any], spatial_dims: int, image_channels: int, condition_channels: int,
                 nz: int) -> None:
        super().__init__()
        self.net = build_backbone(spec, spatial_dims, image_channels + condition_channels, image_channels,
                                  time_conditioned=True)
        width = self.net.time_dim
        self.nz = int(nz)
        self.mapping = nn.Sequential(nn.Linear(self.nz, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                     nn.Linear(width, width))

    def forward(self, x: Tensor, condition: Tensor, t: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([x.to(condition.dtype), condition], dim=1), t, self.mapping(z))


class StepCache:
    """What group ``g`` made for group ``d`` of the same batch (detached)."""

    def __init__(self, source: Tensor, chains: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]],
                 pseudo: dict[str, Tensor]) -> None:
        self.source, self.chains, self.pseudo = source, chains, pseudo


@METHODS.register("syndiff")
class SynDiff(Method):
    """Adversarial few-step diffusion; ``paired: false`` is SynDiff's cycle-coupled unpaired training.

    Args:
        backbone: the diffusive generator(s), any backbone taking ``net(x, t, emb)``.
        discriminator: the diffusive discriminator(s), default ``timed_patchgan``; it sees x_t, x_{t+1}
            (and the condition when ``condition_discriminator``) with the time step.
        paired: true (default, data.paired must be true): conditional DDGAN, 2 networks. false:
            SynDiff on unpaired data, 8 networks.
        cycle_backbone: the non-diffusive generators G_AB, G_BA (unpaired only; ResNet as SynDiff's).
        cycle_discriminator: their discriminators (unpaired only).
        timesteps, beta_min, beta_max: the VP chain (4, 0.1, 20 as SynDiff).
        nz: size of the latent code z (100).
        lambda_l1: weight of the L1 terms on x̂_0 and of the cycle loss (0.5).
        r1_gamma: R1 weight γ (γ/2·E|∇_x D(x_t)|², on real x_t; 1.0 as SynDiff's README).
        r1_every: R1 on every ``r1_every``-th step only ("lazy", 10), not rescaled, as the anchor.
        condition_discriminator: also show the diffusive discriminator the condition image.
        clip: x̂_0 is clipped to ±clip at sampling (data lie in [-1, 1]); null turns it off.
        lr_g, lr_d: learning rates of the groups (1.6e-4 and 1e-4 as SynDiff); null: optim.lr.
        betas: Adam betas of both groups ((0.5, 0.9)).
    """

    paired = True
    groups = ("g", "d")
    stochastic = True
    default_steps = 4

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        paired: bool = True,
        cycle_backbone: dict[str, Any] | None = None,
        cycle_discriminator: dict[str, Any] | None = None,
        timesteps: int = 4,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        nz: int = 100,
        lambda_l1: float = 0.5,
        r1_gamma: float = 1.0,
        r1_every: int = 10,
        condition_discriminator: bool = False,
        clip: float | None = 1.0,
        lr_g: float | None = 1.6e-4,
        lr_d: float | None = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if r1_every < 1 or r1_gamma < 0:
            raise MedtransError(None, f"r1_gamma {r1_gamma}, r1_every {r1_every}",
                                "use r1_gamma >= 0 and r1_every >= 1")
        self.paired = bool(paired)
        self.schedule = AdversarialSchedule(timesteps, beta_min, beta_max)
        self.default_steps = self.schedule.timesteps
        self.nz, self.lambda_l1, self.clip = int(nz), float(lambda_l1), clip
        self.r1_gamma, self.r1_every = float(r1_gamma), int(r1_every)
        self.condition_discriminator = bool(condition_discriminator)
        self.lr = {"g": lr_g, "d": lr_d}
        self.betas = (float(betas[0]), float(betas[1]))
        backbone = backbone or {"name": "unet"}
        discriminator = discriminator or {"name": "timed_patchgan"}
        channels = {"a": in_channels, "b": out_channels}
        # diffusive pair of the target: the only networks of the paired variant, the only one sampled
        self.diffusive_b = DiffusiveGenerator(backbone, spatial_dims, out_channels, in_channels, nz)
        self.disc_b = self._timed_discriminator(discriminator, channels, "b")
        if not self.paired:
            cycle_backbone = cycle_backbone or {"name": "resnet"}
            cycle_discriminator = cycle_discriminator or {"name": "patchgan"}
            self.diffusive_a = DiffusiveGenerator(backbone, spatial_dims, in_channels, out_channels, nz)
            self.disc_a = self._timed_discriminator(discriminator, channels, "a")
            self.g_ab = build_backbone(cycle_backbone, spatial_dims, in_channels, out_channels)
            self.g_ba = build_backbone(cycle_backbone, spatial_dims, out_channels, in_channels)
            self.cycle_disc_a = build_discriminator(cycle_discriminator, spatial_dims, in_channels)
            self.cycle_disc_b = build_discriminator(cycle_discriminator, spatial_dims, out_channels)
        self._cache: StepCache | None = None
        self._announced = False

    @classmethod
    def needs_pairs(cls, args: Mapping[str, Any]) -> bool:
        return bool(args.get("paired", True))

    def _timed_discriminator(self, spec: dict[str, Any], channels: dict[str, int], domain: str) -> nn.Module:
        other = "a" if domain == "b" else "b"
        extra = channels[other] if self.condition_discriminator else 0
        return build_discriminator(spec, self.spatial_dims, 2 * channels[domain] + extra)

    # ----------------------------------------------------------------------------------- networks
    @property
    def inference_generator(self) -> str:
        """Which network translates at test time (SynDiff leaves this choice hidden; here it is fixed)."""
        return (f"diffusive_b: the diffusive generator source→target, {self.schedule.timesteps} steps from "
                "noise, conditioned on the real source")

    def _networks(self, group: str) -> list[nn.Module]:
        if group == "g":
            nets = [self.diffusive_b]
            return nets if self.paired else [*nets, self.diffusive_a, self.g_ab, self.g_ba]
        nets = [self.disc_b]
        return nets if self.paired else [*nets, self.disc_a, self.cycle_disc_a, self.cycle_disc_b]

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return chain.from_iterable(net.parameters() for net in self._networks(group))

    def optimizer_settings(self, group: str) -> dict[str, Any]:
        lr = self.lr[group]
        return {"betas": self.betas, **({"lr": float(lr)} if lr is not None else {})}

    def resolve_steps(self, steps: int | None) -> int | None:
        steps = super().resolve_steps(steps)
        if steps != self.schedule.timesteps:
            raise MedtransError(None, f"syndiff samples along its training chain of exactly "
                                f"{self.schedule.timesteps} steps, not {steps}",
                                f"drop --steps or use --steps {self.schedule.timesteps}")
        return steps

    # ----------------------------------------------------------------------------------- training
    def _judge(self, disc: nn.Module, x: Tensor, x_next: Tensor, condition: Tensor, t: Tensor) -> Tensor:
        parts = [x.to(condition.dtype), x_next.to(condition.dtype)]
        if self.condition_discriminator:
            parts.append(condition)
        return disc(torch.cat(parts, dim=1), t)

    def _denoise_step(self, generator: DiffusiveGenerator, disc: nn.Module, x0: Tensor,
                      condition: Tensor) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]:
        """G's adversarial and L1 terms for one random step of ``x0``'s chain; the step for group d."""
        index = torch.randint(0, self.schedule.timesteps, (x0.shape[0],), device=x0.device)
        x, x_next = self.schedule.sample_pair(x0.float(), index)
        t = self.schedule.time(index + 1)
        z = torch.randn(x0.shape[0], self.nz, device=x0.device)
        predicted = generator(x_next, condition, t, z).float()
        fake = self.schedule.posterior(predicted, x_next, index)
        terms = {"adv": gan_loss(self._judge(disc, fake, x_next, condition, t), True, "vanilla"),
                 "l1": self.lambda_l1 * reconstruction(predicted, x0)}
        return terms, (x, x_next, fake.detach(), t)

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        real_a, real_b = batch["source"], batch["target"]
        if group == "g":
            return self._generator_losses(real_a, real_b)
        cache = self._cache if self._cache is not None and self._cache.source is real_a else None
        if cache is None:  # d stepped without the g step of this batch: make the fakes now
            with torch.no_grad():
                self._generator_losses(real_a, real_b)
            cache = self._cache
        self._cache = None
        assert cache is not None
        lazy_r1 = self.r1_gamma > 0 and step % self.r1_every == 0
        condition = {"b": real_a if self.paired else cache.pseudo.get("a_of_b"),
                     "a": cache.pseudo.get("b_of_a")}
        terms: dict[str, Tensor] = {}
        for domain, (x, x_next, fake, t) in cache.chains.items():
            disc = self.disc_b if domain == "b" else self.disc_a
            terms.update({f"{k}_{domain}": v for k, v in self._discriminator_terms(
                disc, x, x_next, fake, condition[domain], t, lazy_r1).items()})
        if not self.paired:
            terms["cycle_a"] = _gan_pair(self.cycle_disc_a, real_a, cache.pseudo["a_of_b"])
            terms["cycle_b"] = _gan_pair(self.cycle_disc_b, real_b, cache.pseudo["b_of_a"])
        return terms

    def _generator_losses(self, real_a: Tensor, real_b: Tensor) -> dict[str, Tensor]:
        if self.paired:
            terms, chain_b = self._denoise_step(self.diffusive_b, self.disc_b, real_b, real_a)
            self._cache = StepCache(real_a, {"b": chain_b}, {})
            return {f"{k}_b": v for k, v in terms.items()}
        b_of_a, a_of_b = self.g_ab(real_a), self.g_ba(real_b)  # pseudo-target, pseudo-source
        terms_b, chain_b = self._denoise_step(self.diffusive_b, self.disc_b, real_b, a_of_b)
        terms_a, chain_a = self._denoise_step(self.diffusive_a, self.disc_a, real_a, b_of_a)
        self._cache = StepCache(real_a, {"b": chain_b, "a": chain_a},
                                {"b_of_a": b_of_a.detach(), "a_of_b": a_of_b.detach()})
        cycle = reconstruction(self.g_ba(b_of_a), real_a) + reconstruction(self.g_ab(a_of_b), real_b)
        return {
            **{f"{k}_b": v for k, v in terms_b.items()},
            **{f"{k}_a": v for k, v in terms_a.items()},
            "adv_cycle_b": gan_loss(self.cycle_disc_b(b_of_a), True, "vanilla"),
            "adv_cycle_a": gan_loss(self.cycle_disc_a(a_of_b), True, "vanilla"),
            "cycle": self.lambda_l1 * cycle,
        }

    def _discriminator_terms(self, disc: nn.Module, x: Tensor, x_next: Tensor, fake: Tensor,
                             condition: Tensor, t: Tensor, lazy_r1: bool) -> dict[str, Tensor]:
        """softplus(−D(real)) + softplus(D(fake)), and on R1 steps γ/2·E|∇_{x_t} D(x_t)|².

        R1 differentiates a gradient (double backward): on its steps the real branch runs in fp32 with
        autocast off, because a bf16 input gradient squared loses most of its digits.
        """
        terms = {"fake": gan_loss(self._judge(disc, fake, x_next, condition, t), False, "vanilla")}
        if not lazy_r1:
            terms["real"] = gan_loss(self._judge(disc, x, x_next, condition, t), True, "vanilla")
            return terms
        with torch.autocast(x.device.type, enabled=False):
            real = x.detach().float().requires_grad_(True)
            logits = self._judge(disc, real, x_next.float(), condition.float(), t).float()
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            terms["real"] = gan_loss(logits, True, "vanilla")
            terms["r1"] = 0.5 * self.r1_gamma * grad.square().flatten(1).sum(1).mean()
        return terms

    # ----------------------------------------------------------------------------------- sampling
    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        if not self._announced:
            log.info("syndiff translates with %s", self.inference_generator)
            self._announced = True
        batch = source.shape[0]
        x = randn_like(torch.empty(batch, self.out_channels, *source.shape[2:], device=source.device), noise)
        for i in reversed(range(self.schedule.timesteps)):
            index = torch.full((batch,), i, device=source.device, dtype=torch.long)
            z = randn_like(torch.empty(batch, self.nz, device=source.device), noise)
            predicted = self.diffusive_b(x, source, self.schedule.time(index + 1), z).float()
            if self.clip is not None:
                predicted = predicted.clamp(-self.clip, self.clip)
            x = self.schedule.posterior(predicted, x, index, noise)
        return x


def _gan_pair(disc: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Non-saturating discriminator loss of a cycle PatchGAN: softplus(−D(real)) + softplus(D(fake))."""
    return gan_loss(disc(real), True, "vanilla") + gan_loss(disc(fake), False, "vanilla")
