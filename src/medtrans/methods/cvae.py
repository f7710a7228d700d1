"""Conditional VAE (Sohn et al. 2015; Probabilistic U-Net, Kohl et al. 2018): paired, z ~ p(z | source).

A prior net p(z | y) sees the source y, a posterior net q(z | x, y) sees target x and source together;
both are small conv encoders to a global diagonal Gaussian (μ, log σ²). The decoder is the configured
backbone on the source with z injected through its time-conditioning path: a mapping MLP turns z into
the ``emb`` vector that every block's FiLM scale/shift reads (``t`` stays None), so any registered
backbone can be the decoder.

Objective (group ``g``): reconstruction (L1 or L2, mean over voxels) of the decoder output from a
posterior sample, plus β(step) · Σ_d max(KL_d, free_bits) / N_voxels, where KL_d is the batch mean of
KL(q ‖ p) in dimension d. Dividing by the target's voxel count makes β = 1 the ELBO of a unit-scale
Laplace (L1) or Gaussian (L2) likelihood with the voxel-mean reconstruction the engine uses. β warms up
linearly from 0 over ``kl_warmup`` steps; free bits (Kingma et al. 2016) stop the KL pressure on a
dimension below the floor, two guards against posterior collapse. The raw KL of every dimension is
returned as detached terms ``kl_dim_NN`` (nats): the trainer logs every term and sums them, and a
detached term adds a constant that changes no gradient.

Sampling: z ~ p(z | y) from ``noise`` (one draw per sample, so std maps show the prior's spread), or
z = μ_prior with ``prior_mean_only`` (deterministic point estimate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.methods.base import Method
from medtrans.methods.losses import check_choice, reconstruction
from medtrans.methods.schedules import Noise, randn_like
from medtrans.nets import build_backbone
from medtrans.nets.encoders import GlobalEncoder
from medtrans.registry import METHODS

#: log σ² range of the encoders (exp() of a runaway value overflows under bf16 autocast)
LOGVAR_RANGE = (-10.0, 10.0)


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) per element, for diagonal Gaussians."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).square()) / logvar_p.exp() - 1.0)


@METHODS.register("cvae")
class ConditionalVAE(Method):
    """Prior and posterior encoders to a global z, the backbone as decoder with z by FiLM.

    Args:
        backbone: the decoder, ``{"name": ..., **args}``; built with time conditioning (``time_dim`` of
            the spec, else the default), whose embedding receives the mapped z.
        z_dim: latent dimensions.
        encoder: options of both encoders (``width``, ``depth``, ``max_width``, ``norm``,
            ``activation``; see ``nets.encoders.GlobalEncoder``).
        loss: reconstruction ``l1`` or ``l2``.
        beta: KL weight after the warm-up.
        kl_warmup: steps over which β grows linearly from 0 (0: full β from the start).
        free_bits: KL floor per dimension in nats (0 turns it off).
        prior_mean_only: translate with z = μ_prior (one deterministic prediction, no std map).
        masked: when the batch has a ``mask``, average the reconstruction over the mask only.
    """

    stochastic = True

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        z_dim: int = 16,
        encoder: dict[str, Any] | None = None,
        loss: str = "l1",
        beta: float = 1.0,
        kl_warmup: int = 1000,
        free_bits: float = 0.1,
        prior_mean_only: bool = False,
        masked: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.z_dim = int(z_dim)
        encoder = dict(encoder or {})
        self.prior = GlobalEncoder(spatial_dims, in_channels, 2 * self.z_dim, **encoder)
        self.posterior = GlobalEncoder(spatial_dims, in_channels + out_channels, 2 * self.z_dim, **encoder)
        self.decoder = build_backbone(backbone or {"name": "unet"}, spatial_dims, in_channels, out_channels,
                                      time_conditioned=True)
        width = self.decoder.time_dim
        self.mapping = nn.Sequential(nn.Linear(self.z_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.loss = check_choice("cvae loss", loss, ("l1", "l2"))
        self.beta, self.kl_warmup, self.free_bits = float(beta), int(kl_warmup), float(free_bits)
        self.prior_mean_only = bool(prior_mean_only)
        self.stochastic = not self.prior_mean_only
        self.masked = bool(masked)

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return self.parameters()

    def _gaussian(self, net: GlobalEncoder, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = net(x).float().chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, source: Tensor, z: Tensor) -> Tensor:
        return self.decoder(source, None, self.mapping(z.to(self.mapping[0].weight.dtype)))

    def beta_at(self, step: int) -> float:
        """β after ``step`` training steps of the linear warm-up."""
        return self.beta if self.kl_warmup <= 0 else self.beta * min(1.0, step / self.kl_warmup)

    def kl_per_dim(self, source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Batch-mean KL(q(z | x, y) ‖ p(z | y)) per dimension (z_dim,) and a posterior sample z."""
        mu_p, logvar_p = self._gaussian(self.prior, source)
        mu_q, logvar_q = self._gaussian(self.posterior, torch.cat([target.to(source.dtype), source], 1))
        z = mu_q + (0.5 * logvar_q).exp() * torch.randn_like(mu_q)
        return gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).mean(dim=0), z

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        source, target = batch["source"], batch["target"]
        kl, z = self.kl_per_dim(source, target)
        mask = batch.get("mask") if self.masked else None
        voxels = math.prod(target.shape[1:])
        terms = {
            self.loss: reconstruction(self.decode(source, z), target, self.loss, mask),
            "kl": self.beta_at(step) * kl.clamp_min(self.free_bits).sum() / voxels,
        }
        terms.update({f"kl_dim_{d:02d}": value.detach() for d, value in enumerate(kl)})
        return terms

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        mu, logvar = self._gaussian(self.prior, source)
        z = mu if self.prior_mean_only else mu + (0.5 * logvar).exp() * randn_like(mu, noise)
        return self.decode(source, z)
