"""Noise and flow processes as objects: the path at time t, the training target, and a sampler step.

One time convention everywhere in medtrans: t ∈ [0, 1] with **t = 0 at the target** (the clean image)
and **t = 1 at the prior end** (pure noise, or the source image). Samplers run from t = 1 down to 0.
MONAI's schedulers and DDPM/DDIM use this direction; torchcfm and facebookresearch ``flow_matching``
use the opposite one (t = 1 is data): convert at the boundary, never inside.

Schedules are ``nn.Module``s only to hold their tables as persistent buffers: the buffers land in the
checkpoint's weights, so a run always samples with exactly the process it was trained with, even if
a default changes later. They know nothing of networks: a method asks a schedule for ``x_t`` and the
target, calls its network, and hands the output back to ``step``.

Randomness at sampling time comes from a :class:`Noise` (per-item generators), so a sample does not
depend on which other slices share its batch; at training time from torch's global generator (whose
state the checkpoint keeps, for exact resume).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError


class Noise:
    """Independent random streams, one per batch item (CPU generators; draws moved to ``device``).

    Item ``b`` of every draw comes from generator ``b`` alone, so a prediction with a given seed is the
    same whatever the batch size or the order in which slices or windows are batched.
    """

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu") -> None:
        self.generators = list(generators)
        self.device = torch.device(device)

    @classmethod
    def seeded(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> Noise:
        return cls([torch.Generator().manual_seed(int(s) % 2**63) for s in seeds], device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal of ``shape`` (its first axis is the batch: one generator per item)."""
        if shape[0] != len(self.generators):
            raise ValueError(f"noise for a batch of {shape[0]} from {len(self.generators)} streams")
        draws = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(self.device, dtype)

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(x.shape, x.dtype).to(x.device)


def randn_like(x: Tensor, noise: Noise | None) -> Tensor:
    """Normal noise like ``x``: from ``noise`` when sampling reproducibly, else the global generator."""
    return noise.randn_like(x) if noise is not None else torch.randn_like(x)


def broadcast(values: Tensor, like: Tensor) -> Tensor:
    """(B,) per-item values shaped to multiply a (B, C, *spatial) tensor."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def check_steps(steps: int, limit: int | None = None) -> int:
    steps = int(steps)
    if steps < 1 or (limit is not None and steps > limit):
        upto = f" and at most {limit}" if limit is not None else ""
        raise MedtransError(None, f"{steps} sampling steps asked for", f"use at least 1{upto}")
    return steps


# ----------------------------------------------------------------------------------- diffusion (VP)
BETA_SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v", "x0")


def _betas(kind: str, steps: int, beta_start: float, beta_end: float) -> Tensor:
    if kind == "linear":  # DDPM (Ho et al. 2020), MONAI's default: 1e-4 … 2e-2 over 1000 steps
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    # cosine ᾱ (Nichol & Dhariwal 2021), betas capped at 0.999 as in their code
    s = 0.008
    grid = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    f = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


class DiffusionSchedule(nn.Module):
    """Variance-preserving diffusion with T discrete steps: q(x_i | x_0) = N(√ᾱ_i x_0, (1 − ᾱ_i) I).

    Index i ∈ {0 … T} sits at time t = i / T (ᾱ_0 = 1: the clean target). The network output is read
    as ``prediction`` (``eps``, ``v`` = √ᾱ ε − √(1−ᾱ) x_0, or ``x0``); v is the default because it is
    well conditioned at every noise level, which keeps few-step DDIM usable.

    ``step`` is DDIM (Song et al. 2021) between any two indices: deterministic at ``eta = 0``; at
    ``eta = 1`` over all T indices it is DDPM ancestral sampling. One step from T to 0 returns the
    first x̂_0 estimate (the "regression sampling" of YODA).
    """

    def __init__(self, timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 2e-2, prediction: str = "v", clip: float | None = 1.0) -> None:
        super().__init__()
        if beta_schedule not in BETA_SCHEDULES:
            raise MedtransError(None, f"unknown beta_schedule {beta_schedule!r}",
                                f"choose one of: {', '.join(BETA_SCHEDULES)}")
        if prediction not in PREDICTIONS:
            raise MedtransError(None, f"unknown prediction {prediction!r}",
                                f"choose one of: {', '.join(PREDICTIONS)}")
        self.timesteps = int(timesteps)
        self.prediction = prediction
        self.clip = clip
        betas = _betas(beta_schedule, self.timesteps, beta_start, beta_end)
        alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self.register_buffer("alpha_bar", alpha_bar.float())  # index 0 … T

    def _ab(self, index: Tensor, like: Tensor) -> Tensor:
        return broadcast(self.alpha_bar.to(like.device)[index], like)

    def sample_index(self, batch: int, device: torch.device) -> Tensor:
        """Training indices i ~ U{1 … T} (global generator)."""
        return torch.randint(1, self.timesteps + 1, (batch,), device=device)

    def time(self, index: Tensor) -> Tensor:
        """Network time t = i / T ∈ [0, 1]."""
        return index.float() / self.timesteps

    def add_noise(self, x0: Tensor, eps: Tensor, index: Tensor) -> Tensor:
        ab = self._ab(index, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def target(self, x0: Tensor, eps: Tensor, index: Tensor) -> Tensor:
        """What the network learns to output at ``x_i``."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        ab = self._ab(index, x0)
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    def split(self, output: Tensor, x: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) from the network output at ``x_i``; x̂_0 clipped to ±``clip`` (data lie in [-1, 1])."""
        ab = self._ab(index, x)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if self.prediction == "eps":
            x0 = (x - s * output) / a
        elif self.prediction == "x0":
            x0 = output
        else:
            x0 = a * x - s * output
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        eps = (x - a * x0) / s.clamp(min=1e-8)
        return x0, eps

    def indices(self, steps: int) -> list[int]:
        """Evenly spaced indices T = i_0 > … > i_steps = 0 (``steps`` network evaluations)."""
        steps = check_steps(steps, self.timesteps)
        grid = torch.linspace(self.timesteps, 0, steps + 1).round().long().tolist()
        return [int(i) for i in grid]

    def step(self, output: Tensor, index: int, next_index: int, x: Tensor, eta: float = 0.0,
             noise: Noise | None = None) -> Tensor:
        """DDIM update from ``x_index`` to ``x_next_index`` (next < index) given the network output."""
        batch_index = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
        x0, eps = self.split(output, x, batch_index)
        ab, ab_next = self.alpha_bar[index].to(x.device), self.alpha_bar[next_index].to(x.device)
        sigma = eta * torch.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
        direction = torch.sqrt((1 - ab_next - sigma**2).clamp(min=0))
        out = ab_next.sqrt() * x0 + direction * eps
        if eta > 0 and next_index > 0:
            out = out + sigma * randn_like(x, noise)
        return out


# ----------------------------------------------------------------------------------- flow matching
STARTS = ("noise", "source")
TIME_SAMPLING = ("logit_normal", "uniform")


class FlowSchedule(nn.Module):
    """Straight-line (rectified-flow / conditional OT) path from the target (t = 0) to the start (t = 1).

    ``start="noise"``: x_t = (1 − t) x_0 + t ε; the velocity dx/dt = ε − x_0.
    ``start="source"``: x_t = (1 − t) x_0 + t y + σ √(t (1 − t)) ε, a Brownian bridge between target and
    source; the network learns the velocity of the mean path, y − x_0. With σ > 0 the sampler takes the
    bridge's exact posterior step (fresh noise each step, so samples differ and std maps mean
    something); with σ = 0 that step is the Euler step of the ODE.

    Pairs are never re-matched across the batch (no minibatch OT): item i's target is interpolated with
    item i's own noise / source, which is what paired translation needs (torchcfm #117).
    """

    def __init__(self, start: str = "noise", sigma: float = 0.0, time_sampling: str | None = None,
                 logit_mean: float = 0.0, logit_std: float = 1.0) -> None:
        super().__init__()
        if start not in STARTS:
            raise MedtransError(None, f"unknown flow start {start!r}", f"choose one of: {', '.join(STARTS)}")
        time_sampling = time_sampling or ("logit_normal" if start == "noise" else "uniform")
        if time_sampling not in TIME_SAMPLING:
            raise MedtransError(None, f"unknown time_sampling {time_sampling!r}",
                                f"choose one of: {', '.join(TIME_SAMPLING)}")
        if sigma < 0:
            raise MedtransError(None, f"flow sigma {sigma} is negative", "use sigma >= 0")
        self.start = start
        self.sigma = float(sigma)
        self.time_sampling = time_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        # kept as a buffer so the checkpoint records the process (start code, sigma)
        self.register_buffer("params", torch.tensor([STARTS.index(start), self.sigma], dtype=torch.float32))

    def sample_time(self, batch: int, device: torch.device) -> Tensor:
        """Training times: logit-normal concentrates on mid t, where the velocity is hardest to learn."""
        if self.time_sampling == "uniform":
            return torch.rand(batch, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, device=device))

    def prior(self, source: Tensor, shape: Sequence[int], noise: Noise | None) -> Tensor:
        """x_1, where sampling starts: noise, or the source image (its first channel)."""
        if self.start == "noise":
            return noise.randn(shape).to(source.device) if noise is not None else torch.randn(
                tuple(shape), device=source.device)
        return source[:, : shape[1]].clone()

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor, source: Tensor | None = None) -> Tensor:
        tb = broadcast(t, x0)
        if self.start == "noise":
            return (1 - tb) * x0 + tb * eps
        y = source[:, : x0.shape[1]]
        return (1 - tb) * x0 + tb * y + self.sigma * torch.sqrt(tb * (1 - tb)) * eps

    def target(self, x0: Tensor, eps: Tensor, source: Tensor | None = None) -> Tensor:
        """Velocity dx/dt of the (mean) path."""
        if self.start == "noise":
            return eps - x0
        return source[:, : x0.shape[1]] - x0

    def times(self, steps: int) -> list[float]:
        """1 = t_0 > … > t_steps = 0, evenly spaced."""
        steps = check_steps(steps)
        return [1 - i / steps for i in range(steps + 1)]

    def bridge_step(self, velocity: Tensor, t: float, t_next: float, x: Tensor,
                    source: Tensor, noise: Noise | None = None) -> Tensor:
        """Exact posterior of the source-start Brownian bridge, x̂_0 = y − v̂:
        x_{t'} = x̂_0 + (t'/t)(x_t − x̂_0) + σ √(t'(t − t')/t) z; with σ = 0 the Euler step."""
        x0 = source[:, : x.shape[1]] - velocity
        out = x0 + (t_next / t) * (x - x0)
        if self.sigma > 0 and t_next > 0:
            out = out + self.sigma * math.sqrt(t_next * (t - t_next) / t) * randn_like(x, noise)
        return out
