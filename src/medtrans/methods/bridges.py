"""Brownian-bridge processes between the target (t = 0) and the source (t = 1): BBDM, I2SB, SelfRDB.

All three share one marginal, x_t = a_t x_0 + b_t y + s_t ε (x_0 the target, y the source), over
discrete indices i = 0 … N at time t = i / N, with a_0 = 1, b_0 = 0, s_0 = 0 and a_N = 0, b_N = 1.
They differ only in their tables (``PRESETS``):

- ``bbdm`` (Li et al. 2023): a = 1 − m, b = m with m = i / N (so 0.001 … 0.999 inside, N = 1000),
  s² = 2 (m − m²) · max_var: zero at both ends, x_N = y exactly.
- ``i2sb`` (Liu et al. 2023): the Gaussian product of the forward std σ_i² = Σ_{k<i} β_k and the
  backward std σ̄_i² = Σ_{k≥i} β_k of a symmetric β (β_max 0.3, N = 1000): a = σ̄² / (σ² + σ̄²),
  b = σ² / (σ² + σ̄²), s² = σ² σ̄² / (σ² + σ̄²); x_N = y exactly.
- ``selfrdb`` (Arslan et al. 2024): the same Gaussian-product means from a β re-derived from the step
  count (N = 10), and s = γ Σβ σ / (σ² + σ̄²), which grows to ≈ 1.08 at the end: a "soft prior", the
  sampler starts from y + 1.08 ε. Its tables depend on N, so it samples with exactly its N steps.

The tables are persistent buffers: the checkpoint holds the process a model was trained with.
``step`` is the analytic posterior q(x_{t'} | x_t, x̂_0, y) between any two indices t' < t, with
BBDM's ``eta`` (1: the posterior; 0: deterministic, keeping the marginal spread).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.schedules import Noise, broadcast, check_steps, randn_like

PRESETS = ("selfrdb", "i2sb", "bbdm")
#: training steps N of each preset and its default number of sampling steps: the papers sample I2SB
#: in 10 and BBDM in 200, but on the phantom both scored best at 1-4 steps and worse with more (BBDM
#: at 200: -2.5 dB against 4; docs/BENCHMARKS.md, two separate runs), so 4 is the default here
TRAINING_STEPS = {"selfrdb": 10, "i2sb": 1000, "bbdm": 1000}
SAMPLING_STEPS = {"selfrdb": 10, "i2sb": 4, "bbdm": 4}


def _mirrored(betas: Tensor, length: int) -> Tensor:
    """The first half of ``betas`` followed by itself reversed (``length`` values, odd keeps a centre)."""
    half = betas[: length // 2]
    centre = betas[length // 2: length // 2 + 1] if length % 2 else betas[:0]
    return torch.cat([half, centre, half.flip(0)])


def _gaussian_product(increments: Tensor) -> tuple[Tensor, Tensor]:
    """Forward and backward variances σ² = cumsum(increments), σ̄² = σ² reversed (I2SB, SelfRDB)."""
    forward = torch.cumsum(increments, 0)
    return forward, forward.flip(0)


def _tables(preset: str, steps: int, beta_max: float, max_var: float, gamma: float
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b, s) over indices 0 … ``steps`` in float64."""
    n = steps
    if preset == "bbdm":
        m = torch.arange(n + 1, dtype=torch.float64) / n
        return 1 - m, m, (2 * (m - m * m) * max_var).clamp(min=0).sqrt()
    if preset == "i2sb":
        # β = linspace(√1e-4, √(β_max / T), T)², its first half mirrored; a leading 0 puts σ_0 = 0
        betas = torch.linspace(1e-4**0.5, (beta_max / n) ** 0.5, n, dtype=torch.float64) ** 2
        increments = torch.cat([torch.zeros(1, dtype=torch.float64), _mirrored(betas, n)])
        var, var_bar = _gaussian_product(increments)
        total = var + var_bar
        return var_bar / total, var / total, (var * var_bar / total).sqrt()
    # selfrdb: β = linspace(√0.1, √(3 / n), n + 1)² after a 0, mirrored: zero increments at both ends
    betas = torch.linspace(0.1**0.5, (3.0 / n) ** 0.5, n + 1, dtype=torch.float64) ** 2
    increments = _mirrored(torch.cat([torch.zeros(1, dtype=torch.float64), betas]), n + 1)
    var, var_bar = _gaussian_product(increments)
    total = var + var_bar
    return var_bar / total, var / total, gamma * increments.sum() * var.sqrt() / total


class BridgeSchedule(nn.Module):
    """The discrete bridge x_i = a_i x_0 + b_i y + s_i ε, i = 0 … N (see the module docstring).

    Args:
        preset: ``selfrdb`` (default), ``i2sb`` or ``bbdm``.
        timesteps: N; the preset's (10, 1000, 1000) when None. SelfRDB re-derives its β from it.
        beta_max: I2SB's β_max (0.3 for restoration-like tasks).
        max_var: BBDM's peak-variance scale (s² = 0.5 · max_var at m = 0.5).
        gamma: SelfRDB's end-point noise scale (s_N ≈ 1.08 γ at N = 10).
    """

    def __init__(self, preset: str = "selfrdb", timesteps: int | None = None, beta_max: float = 0.3,
                 max_var: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise MedtransError(None, f"unknown bridge preset {preset!r}",
                                f"choose one of: {', '.join(PRESETS)}")
        self.preset = preset
        self.timesteps = int(timesteps or TRAINING_STEPS[preset])
        if self.timesteps < 1:
            raise MedtransError(None, f"bridge timesteps {self.timesteps}", "use at least 1")
        a, b, s = _tables(preset, self.timesteps, float(beta_max), float(max_var), float(gamma))
        self.register_buffer("a", a.float())
        self.register_buffer("b", b.float())
        self.register_buffer("s", s.float())

    @property
    def skips(self) -> bool:
        """Whether any sub-sequence of the N indices may be sampled (not SelfRDB: its β depend on N)."""
        return self.preset != "selfrdb"

    def time(self, index: Tensor | int) -> Tensor:
        """Network time t = i / N ∈ [0, 1]."""
        return torch.as_tensor(index).float() / self.timesteps

    def sample_index(self, batch: int, device: torch.device) -> Tensor:
        """Training indices i ~ U{1 … N} (global generator)."""
        return torch.randint(1, self.timesteps + 1, (batch,), device=device)

    def q_sample(self, x0: Tensor, y: Tensor, index: Tensor, eps: Tensor) -> Tensor:
        """x_i = a_i x_0 + b_i y + s_i ε for per-item indices (B,)."""
        a, b, s = (broadcast(table.to(x0.device)[index], x0) for table in (self.a, self.b, self.s))
        return a * x0 + b * y + s * eps

    def prior(self, y: Tensor, noise: Noise | None) -> Tensor:
        """x_N, where sampling starts: the source, plus s_N ε for SelfRDB's soft prior."""
        end = float(self.s[-1])
        return y.clone() if end == 0 else float(self.b[-1]) * y + end * randn_like(y, noise)

    def indices(self, steps: int) -> list[int]:
        """N = i_0 > … > i_steps = 0, evenly spaced; SelfRDB refuses any count but its own N."""
        steps = check_steps(steps, self.timesteps)
        if not self.skips and steps != self.timesteps:
            raise MedtransError(None, f"the selfrdb bridge was trained with {self.timesteps} steps and "
                                f"cannot sample with {steps} (its β schedule is derived from the step count)",
                                f"use --steps {self.timesteps}, or train with method.args.timesteps: {steps}")
        grid = torch.linspace(self.timesteps, 0, steps + 1).round().long().tolist()
        return [int(i) for i in grid]

    def coefficients(self, index: int, next_index: int, eta: float) -> tuple[float, float]:
        """(k, σ): x_{t'} = a_{t'} x̂_0 + b_{t'} y + k (x_t − a_t x̂_0 − b_t y) + σ z, in float64.

        With v = s²: Var(x_t | x_{t'}) = v_t − v_{t'} (a_t / a_{t'})², the posterior variance is
        ṽ = Var(x_t | x_{t'}) v_{t'} / v_t, k = √((v_{t'} − η² ṽ) / v_t) and σ = η √ṽ. At a noiseless
        end point (v_t = 0, a_t = 0: BBDM and I2SB at t = 1) x_t says nothing beyond y: k = 0, ṽ = v_{t'}.
        """
        a_t, a_next = float(self.a[index].double()), float(self.a[next_index].double())
        v_t, v_next = float(self.s[index].double()) ** 2, float(self.s[next_index].double()) ** 2
        if v_t == 0:
            return 0.0, eta * math.sqrt(v_next)
        transition = max(v_t - v_next * (a_t / a_next) ** 2, 0.0)
        posterior = transition * v_next / v_t
        return math.sqrt(max(v_next - eta**2 * posterior, 0.0) / v_t), eta * math.sqrt(posterior)

    def step(self, x0: Tensor, index: int, next_index: int, x: Tensor, y: Tensor, eta: float = 1.0,
             noise: Noise | None = None) -> Tensor:
        """One posterior step from ``x_index`` to ``x_next_index`` (next < index) given the estimate x̂_0."""
        k, sigma = self.coefficients(index, next_index, eta)
        a_t, b_t = float(self.a[index]), float(self.b[index])
        mean = float(self.a[next_index]) * x0 + float(self.b[next_index]) * y + k * (x - a_t * x0 - b_t * y)
        if sigma > 0 and next_index > 0:
            mean = mean + sigma * randn_like(x, noise)
        return mean

    def run(self, predict: Callable[[Tensor, int], Tensor], y: Tensor, steps: int, eta: float = 1.0,
            noise: Noise | None = None) -> Tensor:
        """Sample x_0 from y with ``steps`` posterior steps; ``predict(x_t, index)`` gives x̂_0."""
        x = self.prior(y, noise)
        indices = self.indices(steps)
        for index, next_index in zip(indices[:-1], indices[1:], strict=True):
            x = self.step(predict(x, index), index, next_index, x, y, eta, noise)
        return x
