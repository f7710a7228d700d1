"""DDPM / DDIM and flow matching: schedules at both ends, posterior consistency with the true x0, a
learned two-mode mixture with the right spread, and the Gaussian oracle through the flow sampler
(FAMILIES.md §9 items 1, 2, 3, 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.ddpm import DDPM
from medtrans.methods.flow import FlowMatching
from medtrans.methods.schedules import DiffusionSchedule, FlowSchedule, Noise
from medtrans.nets import blocks


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_diffusion_schedule_ends(beta_schedule: str) -> None:
    schedule = DiffusionSchedule(1000, beta_schedule)
    ab = schedule.alpha_bar.double()
    assert ab[0] == 1 and torch.all(ab[1:] < ab[:-1])  # monotone from the clean end
    assert float(ab[-1]) < 1e-3  # t = 1 is (almost) pure noise
    x0, eps = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    zero = torch.zeros(4, dtype=torch.long)
    assert torch.equal(schedule.add_noise(x0, eps, zero), x0)  # t = 0 is the target exactly


def test_diffusion_marginal_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    schedule = DiffusionSchedule(1000)
    index = torch.full((100_000,), 300)
    x0 = torch.full((100_000, 1), 0.7)
    xt = schedule.add_noise(x0, torch.randn_like(x0), index)
    ab = float(schedule.alpha_bar[300])
    assert abs(float(xt.mean()) - ab**0.5 * 0.7) < 0.01
    assert abs(float(xt.var()) / (1 - ab) - 1) < 0.01


def _oracle_output(schedule: DiffusionSchedule, x0: Tensor, x: Tensor, index: int) -> Tensor:
    """The network output that a perfect model would give at x_index, knowing the true x0."""
    ab = schedule.alpha_bar[index]
    eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return schedule.target(x0, eps, torch.full((x.shape[0],), index))


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_ddim_with_the_true_x0_lands_on_it(prediction: str, steps: int) -> None:
    schedule = DiffusionSchedule(1000, prediction=prediction, clip=None)
    schedule.double()
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    x = torch.randn_like(x0)
    indices = schedule.indices(steps)
    for index, nxt in zip(indices[:-1], indices[1:], strict=True):
        x = schedule.step(_oracle_output(schedule, x0, x, index), index, nxt, x, eta=0.0)
    torch.testing.assert_close(x, x0, atol=1e-9, rtol=0)


def test_ddpm_ancestral_marginals_match_the_forward_process() -> None:
    """eta = 1 with the true x0: after stepping 1000 → 500 the samples follow q(x_500 | x0) (KS test)."""
    schedule = DiffusionSchedule(1000)
    x0 = torch.full((20_000, 1), 0.5)
    noise = Noise.seeded(range(20_000))
    x = noise.randn(x0.shape)
    indices = [1000, 800, 650, 500]
    for index, nxt in zip(indices[:-1], indices[1:], strict=True):
        x = schedule.step(_oracle_output(schedule, x0, x, index), index, nxt, x, eta=1.0, noise=noise)
    ab = float(schedule.alpha_bar[500])
    standardised = (x[:, 0].numpy() - ab**0.5 * 0.5) / (1 - ab) ** 0.5
    assert stats.kstest(standardised, "norm").pvalue > 0.01


class PixelMLP(blocks.TimeConditioned, nn.Module):
    """A per-pixel MLP (1×1 convs) that follows the backbone contract: toy tasks, one sample per pixel."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64) -> None:
        super().__init__()
        self.init_time(32)
        self.inp = nn.Conv2d(in_channels, width, 1)
        self.film = blocks.FiLM(32, width)
        self.mid = nn.Conv2d(width, width, 1)
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: Tensor, t: Tensor | None = None, emb: Tensor | None = None) -> Tensor:
        h = torch.nn.functional.silu(self.inp(x))
        embedding = self.embedding(t, emb, x.shape[0])
        if embedding is not None:
            h = self.film(h, embedding)
        return self.out(torch.nn.functional.silu(self.mid(torch.nn.functional.silu(h))))


def _mixture_batch(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Source ±1 picks the mode; target = 2·source + 0.3·N(0, 1), as 8×8 'images' of i.i.d. pixels."""
    sign = torch.randint(0, 2, (n, 1, 1, 1), generator=generator).float() * 2 - 1
    source = sign.expand(n, 1, 8, 8).contiguous()
    target = 2 * source + 0.3 * torch.randn(n, 1, 8, 8, generator=generator)
    return {"source": source, "target": target / 2.5}  # inside [-1, 1] as the plan's data are


def _train(method: nn.Module, steps: int, lr: float = 2e-3) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(method.parameters(), lr=lr)
    for step in range(steps):
        loss = sum(method.losses(_mixture_batch(16, g), "g", step).values())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_ddpm_learns_a_two_mode_mixture_with_the_right_spread() -> None:
    method = DDPM(2, 1, backbone={"name": "unet", "width": 4, "depth": 1}, timesteps=200)
    method.net = PixelMLP(2, 1)
    _train(method, 1500)
    method.eval()
    for sign in (-1.0, 1.0):
        source = torch.full((32, 1, 8, 8), sign)  # 2048 samples per mode
        with torch.no_grad():
            out = method.translate(source, steps=20, noise=Noise.seeded(range(32)))[0] * 2.5
        assert abs(float(out.mean()) - 2 * sign) < 0.15
        assert abs(float(out.std()) / 0.3 - 1) < 0.25  # a mean-only (collapsed) model fails this


def test_ddpm_refuses_more_steps_than_it_was_trained_with() -> None:
    method = DDPM(2, 1, backbone={"name": "unet", "width": 4, "depth": 1}, timesteps=50)
    with pytest.raises(MedtransError, match="at most 50"):
        method.translate(torch.zeros(1, 1, 8, 8), steps=60)


class GaussianOracle(nn.Module):
    """Backbone-contract oracle: the exact velocity for 1D Gaussian targets N(mu, s²) (x_t in channel 0).

    ``coupling="ot"``: the monotone (optimal-transport) map x0 = mu + s·eps, whose paths are straight;
    ``"independent"``: the marginal velocity E[eps − x0 | x_t] of independently drawn pairs.
    """

    def __init__(self, mu: float, s: float, coupling: str) -> None:
        super().__init__()
        self.mu, self.s, self.coupling = mu, s, coupling

    def forward(self, x: Tensor, t: Tensor, emb: Tensor | None = None) -> Tensor:
        xt, tb = x[:, :1].double(), t.double().reshape(-1, 1, 1, 1)
        mu, s = self.mu, self.s
        if self.coupling == "ot":
            eps = (xt - (1 - tb) * mu) / ((1 - tb) * s + tb)
            return (eps * (1 - s) - mu).float()
        cov = tb - (1 - tb) * s**2
        var = (1 - tb) ** 2 * s**2 + tb**2
        return (-mu + cov / var * (xt - (1 - tb) * mu)).float()


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun"])
def test_flow_one_step_maps_noise_to_the_target_gaussian_along_straight_paths(solver: str) -> None:
    method = FlowMatching(2, 1, backbone={"name": "unet", "width": 4, "depth": 1}, solver=solver)
    method.net = GaussianOracle(mu=1.5, s=0.4, coupling="ot")
    source = torch.zeros(64, 1, 16, 16)
    for steps in (1, 10):
        out = method.translate(source, steps=steps, noise=Noise.seeded(range(64)))[0]
        assert abs(float(out.mean()) - 1.5) < 1e-2 and abs(float(out.std()) - 0.4) < 1e-2, steps


def test_flow_independent_coupling_needs_many_steps_and_signs_are_right() -> None:
    """The marginal velocity of independent pairs is curved: one step collapses to the mean,
    many Euler steps reach N(mu, s²); a sign or direction error would miss both."""
    method = FlowMatching(2, 1, backbone={"name": "unet", "width": 4, "depth": 1})
    method.net = GaussianOracle(mu=1.5, s=0.4, coupling="independent")
    source = torch.zeros(64, 1, 16, 16)
    one = method.translate(source, steps=1, noise=Noise.seeded(range(64)))[0]
    assert abs(float(one.mean()) - 1.5) < 1e-2 and float(one.std()) < 1e-3
    many = method.translate(source, steps=200, noise=Noise.seeded(range(64)))[0]
    assert abs(float(many.mean()) - 1.5) < 2e-2 and abs(float(many.std()) - 0.4) < 2e-2


def test_flow_paths_pair_each_target_with_its_own_source_and_noise() -> None:
    """No minibatch-OT re-pairing: item i of x_t is built from item i's target, noise and source."""
    x0, eps, y = torch.randn(5, 1, 3, 3), torch.randn(5, 1, 3, 3), torch.randn(5, 1, 3, 3)
    t = torch.rand(5)
    for schedule in (FlowSchedule("noise"), FlowSchedule("source", sigma=0.3)):
        xt = schedule.add_noise(x0, eps, t, y)
        for i in range(5):
            alone = schedule.add_noise(x0[i:i + 1], eps[i:i + 1], t[i:i + 1], y[i:i + 1])
            torch.testing.assert_close(xt[i:i + 1], alone)


def test_flow_source_bridge_with_the_true_target_lands_on_it() -> None:
    """sigma = 0: the source bridge is deterministic and ends at f(y) for a perfect velocity."""
    schedule = FlowSchedule("source", sigma=0.0)
    y = torch.randn(4, 1, 6, 6)
    target = 2 * y + 0.5
    x = y.clone()
    times = schedule.times(5)
    for t, nxt in zip(times[:-1], times[1:], strict=True):
        x = schedule.bridge_step(y - target, t, nxt, x, y)
    torch.testing.assert_close(x, target)


def test_flow_learns_the_mixture_from_noise() -> None:
    method = FlowMatching(2, 1, backbone={"name": "unet", "width": 4, "depth": 1})
    method.net = PixelMLP(2, 1)
    _train(method, 1500)
    method.eval()
    for sign in (-1.0, 1.0):
        with torch.no_grad():
            out = method.translate(torch.full((32, 1, 8, 8), sign), steps=10,
                                   noise=Noise.seeded(range(32)))[0] * 2.5
        assert abs(float(out.mean()) - 2 * sign) < 0.15
        assert abs(float(out.std()) / 0.3 - 1) < 0.3


def test_ddim_steps_are_even_and_end_at_zero() -> None:
    schedule = DiffusionSchedule(1000)
    assert schedule.indices(4) == [1000, 750, 500, 250, 0]
    assert schedule.indices(1) == [1000, 0]
    np.testing.assert_allclose(FlowSchedule().times(4), [1, 0.75, 0.5, 0.25, 0])
