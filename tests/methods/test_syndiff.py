"""SynDiff / conditional DDGAN: the T = 4 chain, the coupling of its 8 networks, what runs at test time."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from medtrans.config import validate_config
from medtrans.errors import MedtransError
from medtrans.methods.schedules import Noise
from medtrans.methods.syndiff_schedule import AdversarialSchedule
from medtrans.nets import build_discriminator
from medtrans.registry import METHODS

TINY = {
    "backbone": {"name": "unet", "depth": 1, "width": 4, "time_dim": 16},
    "discriminator": {"name": "timed_patchgan", "n_layers": 2, "width": 4, "time_dim": 16},
    "cycle_backbone": {"name": "resnet", "width": 4, "n_blocks": 1, "n_down": 1},
    "cycle_discriminator": {"name": "patchgan", "n_layers": 2, "width": 4},
    "nz": 8,
}
NETWORKS = ("diffusive_b", "disc_b", "diffusive_a", "disc_a", "g_ab", "g_ba", "cycle_disc_a", "cycle_disc_b")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def make(paired: bool, **kwargs):
    torch.manual_seed(0)
    return METHODS.get("syndiff")(spatial_dims=2, in_channels=1, out_channels=1, paired=paired,
                                  **{**TINY, **kwargs})


def unpaired_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"source": torch.rand(2, 1, 16, 16, generator=g) * 2 - 1,
            "target": torch.rand(2, 1, 16, 16, generator=g) * 2 - 1}


def record_inputs(module: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    calls: list[tuple[torch.Tensor, ...]] = []
    module.register_forward_hook(lambda _m, args, _out: calls.append(tuple(a.detach() for a in args
                                                                           if torch.is_tensor(a))))
    return calls


def record_outputs(module: nn.Module) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    module.register_forward_hook(lambda _m, _args, out: outputs.append(out.detach()))
    return outputs


# ----------------------------------------------------------------------------------- the chain
def test_t4_schedule_matches_syndiff_values() -> None:
    schedule = AdversarialSchedule()
    root = schedule.alpha_bar.double().sqrt()
    torch.testing.assert_close(root, torch.tensor([1.0, 0.722, 0.280, 0.0586, 0.0066], dtype=torch.float64),
                               atol=2e-3, rtol=0)
    assert schedule.alpha_bar[0] == 1 and schedule.alpha_bar[-1] < 1e-3
    assert bool((schedule.alpha_bar[1:] < schedule.alpha_bar[:-1]).all())
    # the closed form of the VP SDE at t = 1: ᾱ = exp(−½(β_max − β_min) − β_min) / ᾱ(t_0)
    t0 = 1e-3
    expected = math.exp(-0.5 * 19.9 - 0.1) / math.exp(-0.5 * t0**2 * 19.9 - t0 * 0.1)
    assert math.isclose(float(schedule.alpha_bar[-1]), expected, rel_tol=1e-5)


def test_pairs_and_posterior_have_the_forward_marginals() -> None:
    """x_{i+1} of a sampled pair ~ q(x_{i+1} | x_0); the posterior from it with the TRUE x_0 gives back
    q(x_i | x_0) (Monte Carlo, 10⁵ draws); at i = 0 the posterior returns x_0 exactly."""
    torch.manual_seed(0)
    schedule = AdversarialSchedule()
    n = 100_000
    x0 = torch.full((n, 1, 1, 1), 0.6)
    for i in range(schedule.timesteps):
        index = torch.full((n,), i)
        x, x_next = schedule.sample_pair(x0, index)
        ab, ab_next = float(schedule.alpha_bar[i]), float(schedule.alpha_bar[i + 1])
        assert abs(x_next.mean() - 0.6 * math.sqrt(ab_next)) < 0.01
        assert abs(x_next.var() / (1 - ab_next) - 1) < 0.02
        back = schedule.posterior(x0, x_next, index)
        if i == 0:
            torch.testing.assert_close(back, x0, atol=1e-6, rtol=0)
            continue
        assert abs(back.mean() - 0.6 * math.sqrt(ab)) < 0.01
        assert abs(back.var() / (1 - ab) - 1) < 0.02


def test_timed_discriminator_depends_on_time_and_keeps_patch_shape() -> None:
    torch.manual_seed(0)
    disc = build_discriminator(TINY["discriminator"], 2, 3)
    x = torch.randn(2, 3, 16, 16)
    early, late = disc(x, torch.tensor([0.25, 0.25])), disc(x, torch.tensor([1.0, 1.0]))
    assert early.shape == (2, 1, 2, 2)
    assert not torch.allclose(early, late)
    assert build_discriminator(TINY["discriminator"], 3, 3)(torch.randn(1, 3, 16, 16, 16),
                                                            torch.ones(1)).shape == (1, 1, 2, 2, 2)


# ----------------------------------------------------------------------------------- the coupling
def test_unpaired_diffusive_generators_are_conditioned_on_pseudo_sources() -> None:
    method = make(paired=False).train()
    batch = unpaired_batch()
    into_b, into_a = record_inputs(method.diffusive_b.net), record_inputs(method.diffusive_a.net)
    from_ba, from_ab = record_outputs(method.g_ba), record_outputs(method.g_ab)
    method.losses(batch, "g", step=0)
    (x_b, *_), (x_a, *_) = into_b[0], into_a[0]
    # channel 0 is x_{t+1}; the rest is the condition: G_BA(real B) for B, G_AB(real A) for A
    torch.testing.assert_close(x_b[:, 1:], from_ba[0], rtol=0, atol=0)
    torch.testing.assert_close(x_a[:, 1:], from_ab[0], rtol=0, atol=0)
    assert not torch.allclose(x_b[:, 1:], batch["source"]) and not torch.allclose(x_a[:, 1:], batch["target"])


def test_inference_runs_only_the_target_diffusive_generator_on_the_real_source(
        caplog: pytest.LogCaptureFixture) -> None:
    method = make(paired=False).eval()
    calls = {name: record_inputs(getattr(method, name)) for name in NETWORKS}
    source = unpaired_batch()["source"]
    with caplog.at_level(logging.INFO, logger="medtrans.methods.syndiff"), torch.no_grad():
        mean, std = method.translate(source, samples=2, noise=Noise.seeded([3, 4]))
    assert {name for name, c in calls.items() if c} == {"diffusive_b"}
    assert len(calls["diffusive_b"]) == 2 * 4 == 2 * method.evaluations(4)  # 4 network calls per draw
    for _x, condition, *_ in calls["diffusive_b"]:
        torch.testing.assert_close(condition, source, rtol=0, atol=0)
    assert mean.shape == source.shape and float(std.mean()) > 0
    assert "diffusive_b" in caplog.text and "real source" in method.inference_generator
    with pytest.raises(MedtransError, match="exactly 4 steps"):
        method.translate(source, steps=2)


@pytest.mark.parametrize("paired", [False, True])
def test_one_step_changes_every_network_and_only_those(paired: bool, train) -> None:
    method = make(paired=paired, lr_g=None, lr_d=None).train()  # the helper gives the lr
    present = [name for name in NETWORKS if hasattr(method, name)]
    assert present == (["diffusive_b", "disc_b"] if paired else list(NETWORKS))
    # no other parameter-holding network exists (schedule has buffers only)
    assert {n for n, m in method.named_children() if any(True for _ in m.parameters())} == set(present)
    before = {name: [p.detach().clone() for p in getattr(method, name).parameters()] for name in present}
    history = train(method, [unpaired_batch()], lr=1e-2)
    for name in present:
        after = list(getattr(method, name).parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before[name], after, strict=True)), name
    assert "d/r1_b" in history[0] and history[0]["d/r1_b"] > 0  # step 0 is an R1 step


def test_r1_is_computed_in_fp32_under_bf16_autocast_and_only_on_lazy_steps() -> None:
    method = make(paired=True, r1_every=3)
    batch = unpaired_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method.losses(batch, "g", step=3)
        terms = method.losses(batch, "d", step=3)
        method.losses(batch, "g", step=4)
        lazy = method.losses(batch, "d", step=4)
    assert terms["r1_b"].dtype == torch.float32 and "r1_b" not in lazy
    # reference: the same penalty by hand, in float64
    method.losses(batch, "g", step=3)
    x, x_next, _, t = method._cache.chains["b"]
    real = x.double().requires_grad_(True)
    disc = method.disc_b.double()
    (grad,) = torch.autograd.grad(disc(torch.cat([real, x_next.double()], 1), t).sum(), real)
    method.disc_b.float()
    expected = 0.5 * grad.square().flatten(1).sum(1).mean()
    recomputed = method.losses(batch, "d", step=3)["r1_b"]
    assert math.isclose(float(recomputed.detach()), float(expected), rel_tol=1e-4)


def test_optimiser_settings_follow_syndiff() -> None:
    method = make(paired=True)
    assert method.optimizer_settings("g") == {"betas": (0.5, 0.9), "lr": 1.6e-4}
    assert method.optimizer_settings("d") == {"betas": (0.5, 0.9), "lr": 1e-4}
    assert make(paired=True, lr_g=None).optimizer_settings("g") == {"betas": (0.5, 0.9)}


# ----------------------------------------------------------------------------------- recipes
def test_recipes_validate_and_paired_mode_refuses_unpaired_data() -> None:
    paired = yaml.safe_load((CONFIGS / "phantom_t1_t2_syndiff.yaml").read_text())
    unpaired = yaml.safe_load((CONFIGS / "phantom_t1_t2_syndiff_unpaired.yaml").read_text())
    validate_config(paired)
    assert validate_config(unpaired).method.args["paired"] is False and unpaired["data"]["paired"] is False
    paired["data"]["paired"] = False
    with pytest.raises(MedtransError, match="learns from pairs"):
        validate_config(paired)
