"""The few-step VP chain of adversarial diffusion (DDGAN, Xiao et al. 2022; SynDiff, Özbey et al. 2023).

T = 4 (by default) indices at times t_k = k/T·(1 − ε) + ε, ε = 1e-3, of the continuous VP SDE with a
linear β(t) from β_min = 0.1 to β_max = 20: ᾱ(t) = exp(−½ t² (β_max − β_min) − t β_min), normalised so
that index 0 is the clean target (ᾱ_0 = 1, as DDGAN's β_0 = 1e-8 makes it). √ᾱ ≈ 1.0, 0.72, 0.28,
0.06, 0.007: x_T is essentially pure noise. Steps this large make the true reverse conditional
q(x_i | x_{i+1}) far from Gaussian, which is why a GAN learns it; given an x̂_0 the sampler then draws
the DDPM posterior q(x_i | x_{i+1}, x̂_0).

The algebra of q(x_i | x_0) (``add_noise``, ``time``, the persistent ``alpha_bar`` buffer) is that of
:class:`~medtrans.methods.schedules.DiffusionSchedule`; this class only builds a different ᾱ table and
adds what the adversarial chain needs per batch item: the pair (x_i, x_{i+1}) and the posterior draw.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medtrans.errors import MedtransError
from medtrans.methods.schedules import DiffusionSchedule, Noise, broadcast, randn_like


def vp_alpha_bar(timesteps: int, beta_min: float = 0.1, beta_max: float = 20.0,
                 eps: float = 1e-3) -> Tensor:
    """ᾱ at the T + 1 indices (float64), index 0 exactly 1."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps * (1 - eps) + eps
    alpha_bar = torch.exp(-0.5 * t**2 * (beta_max - beta_min) - t * beta_min)
    return alpha_bar / alpha_bar[0]


class AdversarialSchedule(DiffusionSchedule):
    """VP chain with few, large steps; the network predicts x̂_0 (never clipped here: the method clips
    at sampling only, so training gradients pass through every value)."""

    def __init__(self, timesteps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if timesteps < 1:
            raise MedtransError(None, f"{timesteps} diffusion steps", "use at least 1 (SynDiff uses 4)")
        if not 0 <= beta_min < beta_max:
            raise MedtransError(None, f"beta_min {beta_min} and beta_max {beta_max}",
                                "use 0 <= beta_min < beta_max (SynDiff: 0.1 and 20)")
        super().__init__(timesteps, prediction="x0", clip=None)
        self.alpha_bar.copy_(vp_alpha_bar(self.timesteps, beta_min, beta_max).float())

    def sample_pair(self, x0: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """(x_i, x_{i+1}) drawn jointly for per-item indices ``index`` ∈ {0 … T−1} (global generator):
        x_i ~ q(x_i | x_0), then one forward step x_{i+1} ~ q(x_{i+1} | x_i)."""
        x = self.add_noise(x0, torch.randn_like(x0), index)
        ratio = self._ab(index + 1, x0) / self._ab(index, x0)  # ᾱ_{i+1} / ᾱ_i = 1 − β_{i+1}
        return x, ratio.sqrt() * x + (1 - ratio).sqrt() * torch.randn_like(x0)

    def posterior(self, x0: Tensor, x_next: Tensor, index: Tensor, noise: Noise | None = None) -> Tensor:
        """A draw of x_i ~ q(x_i | x_{i+1}, x̂_0) per item (``index`` = i ∈ {0 … T−1}); no noise at i = 0.

        Mean (√ᾱ_i β_{i+1} x̂_0 + √(1 − β_{i+1}) (1 − ᾱ_i) x_{i+1}) / (1 − ᾱ_{i+1}),
        variance β_{i+1} (1 − ᾱ_i) / (1 − ᾱ_{i+1}) (Ho et al. 2020, eq. 7).
        """
        ab, ab_next = self._ab(index, x0), self._ab(index + 1, x0)
        beta = 1 - ab_next / ab
        mean = (ab.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab) * x_next) / (1 - ab_next)
        std = (beta * (1 - ab) / (1 - ab_next)).sqrt()
        fresh = randn_like(x_next, noise)
        return mean + std * fresh * broadcast((index > 0).float(), x0)
