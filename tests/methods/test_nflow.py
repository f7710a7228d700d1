"""The conditional normalizing flow: every layer exactly invertible with log|det J| equal to the autograd
Jacobian (float64), ActNorm's data-dependent init and its survival across a state_dict round trip, a
Gaussian learnt to its analytic entropy, and the method's one-pass sampling contract."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.nflow import NormalizingFlow
from medtrans.methods.schedules import Noise
from medtrans.nets.flow_layers import (
    ActNorm,
    AffineCoupling,
    ConditionalGlow,
    FlowSequence,
    GaussianPrior,
    InvConv1x1,
    Squeeze,
    flow_step,
)

COND = 3  # source feature channels in the layer tests


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Random weights everywhere: zero-initialised couplings and priors would be the identity, whose
    Jacobian hides every log-det bookkeeping error."""
    for p in module.parameters():
        p.add_(scale * torch.randn_like(p))
    return module


def glow(spatial_dims: int, channels: int = 2) -> ConditionalGlow:
    encoder = nn.Conv2d(1, COND, 3, padding=1) if spatial_dims == 2 else nn.Conv3d(1, COND, 3, padding=1)
    return ConditionalGlow(spatial_dims, channels, COND, encoder, levels=2, depth=2, hidden=8)


# (name, layer factory, x shape (one item), cond shape or None)
LAYERS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], tuple[int, ...] | None]] = [
    ("squeeze", lambda: Squeeze(2), (2, 4, 4), None),
    ("squeeze3d", lambda: Squeeze(3), (2, 2, 4, 2), None),
    ("actnorm", lambda: ActNorm(2, 2), (2, 4, 4), None),
    ("invconv", lambda: InvConv1x1(4), (4, 2, 2), None),
    ("coupling", lambda: AffineCoupling(2, 3, COND, hidden=8), (3, 4, 4), (COND, 4, 4)),
    ("split_prior", lambda: GaussianPrior(2, 4, 2, COND), (4, 2, 2), (COND, 2, 2)),
    ("top_prior", lambda: GaussianPrior(2, 4, 0, COND), (4, 2, 2), (COND, 2, 2)),
    ("step3d", lambda: flow_step(3, 4, COND, hidden=8), (4, 2, 2, 2), (COND, 2, 2, 2)),
    ("glow2d", lambda: glow(2), (2, 4, 4), (1, 4, 4)),
    ("glow3d", lambda: glow(3, 1), (1, 4, 4, 4), (1, 4, 4, 4)),
]


def _build(factory: Callable[[], nn.Module], shape: tuple[int, ...],
           cond_shape: tuple[int, ...] | None) -> tuple[nn.Module, Tensor, Tensor | None]:
    torch.manual_seed(0)
    layer = factory().double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    cond = torch.randn(2, *cond_shape, dtype=torch.float64) if cond_shape else None
    layer(x, cond)  # the ActNorms' data-dependent init, then random weights on top
    return perturb(layer), x, cond


@pytest.mark.parametrize("name, factory, shape, cond_shape", LAYERS, ids=[case[0] for case in LAYERS])
def test_layer_inverts_exactly_and_logdet_is_the_jacobian(name: str, factory: Callable[[], nn.Module],
                                                          shape: tuple[int, ...],
                                                          cond_shape: tuple[int, ...] | None) -> None:
    layer, x, cond = _build(factory, shape, cond_shape)
    y, logdet = layer(x, cond)
    assert y.shape[0] == 2 and y[0].numel() == x[0].numel() and logdet.shape == (2,)
    assert (layer.inverse(y, cond) - x).abs().max() < 1e-5
    assert (y.flatten(1) - x.flatten(1)).abs().max() > 1e-2  # not the identity (squeeze: a permutation)
    for item in range(2):
        c = cond[item : item + 1] if cond is not None else None
        jac = torch.autograd.functional.jacobian(lambda v, c=c: layer(v, c)[0], x[item : item + 1])
        sign, logabs = torch.linalg.slogdet(jac.reshape(x[0].numel(), x[0].numel()))
        assert sign != 0
        assert abs(float(logabs) - float(logdet[item].detach())) < 1e-4, name


def test_full_flow_inverts_in_float32_too() -> None:
    torch.manual_seed(1)
    flow = perturb(glow(2), 0.1)
    x, source = torch.randn(2, 2, 8, 8), torch.randn(2, 1, 8, 8)
    eps, _ = flow(x, source)
    assert (flow.inverse(eps, source) - x).abs().max() < 1e-5


def test_actnorm_initialises_to_zero_mean_unit_variance_on_the_first_batch_only() -> None:
    torch.manual_seed(0)
    norm = ActNorm(2, 3)
    x = torch.randn(8, 3, 5, 5) * torch.tensor([0.1, 2.0, 7.0]).view(1, 3, 1, 1) + torch.tensor(
        [5.0, -1.0, 0.3]).view(1, 3, 1, 1)
    y, _ = norm(x)
    assert bool(norm.initialized)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    loc = norm.loc.detach().clone()
    norm(3 * x + 1)  # a second batch does not re-initialise
    assert torch.equal(norm.loc, loc)


def test_untrained_actnorm_does_not_initialise_in_eval_mode() -> None:
    norm = ActNorm(2, 2).eval()
    x = torch.randn(2, 2, 3, 3) + 4
    y, logdet = norm(x)
    assert not bool(norm.initialized) and torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


def tiny_method(**kwargs: object) -> NormalizingFlow:
    settings: dict[str, object] = {"backbone": {"name": "unet", "depth": 1, "width": 4}, "levels": 2,
                                   "depth": 2, "hidden": 16, "cond_channels": 8, **kwargs}
    return NormalizingFlow(2, 1, 1, **settings)  # type: ignore[arg-type]


def _batch(seed: int, size: tuple[int, int] = (8, 8)) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(4, 1, *size, generator=g) * 2 - 1
    return {"source": source, "target": 0.5 * source + 0.1 * torch.randn(source.shape, generator=g)}


def test_actnorm_init_survives_a_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    trained = tiny_method()
    trained.losses(_batch(0), "g")
    norms = [m for m in trained.modules() if isinstance(m, ActNorm)]
    assert len(norms) == 4 and all(bool(m.initialized) for m in norms)
    loaded = tiny_method()
    loaded.load_state_dict(trained.state_dict())
    loaded.losses(_batch(1), "g")  # a new first batch for the loaded model: it must not re-initialise
    for name, tensor in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    torch.manual_seed(5)
    a = trained.losses(_batch(2), "g")["nll_bpd"]
    torch.manual_seed(5)
    assert torch.equal(loaded.losses(_batch(2), "g")["nll_bpd"], a)


def test_a_gaussian_is_learnt_to_its_analytic_entropy() -> None:
    """2D N(μ, Σ) as a 2-channel 1×1 image: after training, the NLL of fresh samples is within 0.05 nats
    of the entropy ½ log det(2πe Σ) (a flow off by a log-det term misses it by far more)."""
    torch.manual_seed(0)
    mean = torch.tensor([1.5, -0.5])
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    chol = torch.linalg.cholesky(cov)

    def draw(n: int) -> Tensor:
        return (mean + torch.randn(n, 2) @ chol.T).view(n, 2, 1, 1)

    flow = FlowSequence([flow_step(2, 2, hidden=16)])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)

    def nll(x: Tensor) -> Tensor:
        z, logdet = flow(x)
        return (0.5 * (z.flatten(1) ** 2).sum(1) + math.log(2 * math.pi) - logdet).mean()

    for _ in range(150):
        opt.zero_grad()
        nll(draw(256)).backward()
        opt.step()
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 2 * float(torch.linalg.det(cov)))
    with torch.no_grad():
        assert abs(float(nll(draw(20000))) - entropy) < 0.05


def test_losses_are_bits_per_dim_in_fp32_even_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    method = tiny_method(l1_weight=0.5)
    batch = _batch(0, (10, 7))  # not a multiple of 2**levels: padded, cropped back for the L1
    method.losses(batch, "g")  # ActNorm init
    torch.manual_seed(3)
    plain = method.losses(batch, "g")
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = method.losses(batch, "g")
    assert set(plain) == {"nll_bpd", "l1"}
    for key in plain:
        assert mixed[key].dtype == torch.float32 and torch.equal(mixed[key], plain[key])
    # right after init the flow is ≈ a per-channel standardisation: bits/dim near that of N(0, 1) data
    # scaled by the target's std, far from the 2.05 bits of unit-variance noise
    std = float(batch["target"].std())
    expected = 0.5 * math.log2(2 * math.pi * math.e) + math.log2(std)
    assert abs(float(plain["nll_bpd"].detach()) - expected) < 0.5


def test_sampling_is_one_pass_reproducible_and_scaled_by_temperature() -> None:
    torch.manual_seed(0)
    method = tiny_method()
    method.losses(_batch(0), "g")
    perturb(method.flow.flow, 0.05)
    method.eval()
    source = _batch(1, (9, 12))["source"]
    with pytest.raises(MedtransError, match="no step count"):
        method.translate(source, steps=4)
    assert method.resolve_steps(None) is None and method.stochastic
    with torch.no_grad():
        a = method.sample(source, None, Noise.seeded([1, 2, 3, 4]))
        b = method.sample(source, None, Noise.seeded([1, 2, 3, 4]))
        alone = method.sample(source[2:3], None, Noise.seeded([3]))
        other = method.sample(source, None, Noise.seeded([5, 6, 7, 8]))
        mean, std = method.translate(source, samples=3, noise=Noise.seeded([1, 2, 3, 4]))
        method.temperature = 0.0
        cold = [method.sample(source, None, Noise.seeded([s] * 4)) for s in (1, 9)]
    assert a.shape == source.shape and torch.equal(a, b)
    torch.testing.assert_close(alone, a[2:3], atol=1e-5, rtol=0)  # whatever else is in the batch
    assert (a - other).abs().mean() > 1e-2
    assert std is not None and mean.shape == std.shape == source.shape and float(std.mean()) > 1e-3
    assert torch.equal(cold[0], cold[1])  # τ = 0: the deterministic mode-like sample


def test_nflow_learns_a_conditional_affine_map(train: Callable[..., list[dict[str, float]]]) -> None:
    """target = 0.5 · source + 0.1 noise, fresh data every step: the held-out NLL falls and the
    temperature-0 sample follows the source (an unconditioned flow would stay uncorrelated)."""
    torch.manual_seed(0)
    method = tiny_method()
    held_out = _batch(1000)
    train(method, [_batch(0)], lr=3e-3)  # ActNorm init
    torch.manual_seed(1)
    before = float(method.losses(held_out, "g")["nll_bpd"].detach())
    train(method, [_batch(i) for i in range(1, 50)], lr=1e-2)
    torch.manual_seed(1)
    after = float(method.losses(held_out, "g")["nll_bpd"].detach())
    method.eval()
    method.temperature = 0.0
    with torch.no_grad():
        mode = method.sample(held_out["source"], None, None)
    corr = float(torch.corrcoef(torch.stack([mode.flatten(), held_out["source"].flatten()]))[0, 1])
    assert after < before - 0.1 and corr > 0.3, (before, after, corr)


def test_a_coupling_inverse_never_amplifies_whatever_its_weights() -> None:
    """The inverse coupling contracts and adds a bounded shift: |x_b| ≤ |y_b| + shift_bound everywhere,
    even with wild weights and inputs unlike any training data (a sampled ε). A two-sided log-scale
    multiplies by up to e^clamp per coupling, and L × K of those made sampled images explode."""
    torch.manual_seed(0)
    coupling = perturb(AffineCoupling(2, 4, COND, hidden=8), 2.0)
    y, cond = 5 * torch.randn(4, 4, 6, 6), 5 * torch.randn(4, COND, 6, 6)
    x = coupling.inverse(y, cond)
    assert torch.equal(x[:, :2], y[:, :2])
    gain = (x[:, 2:].abs() - y[:, 2:].abs()).max()
    assert 0 < gain <= coupling.shift_bound + 1e-5  # the shift is used, and bounded
    assert (coupling(x, cond)[0] - y).abs().max() < 1e-4


def test_samples_of_a_perturbed_flow_stay_within_a_multiple_of_the_data_range() -> None:
    """A flow whose couplings were knocked far from anything trained (random weights of std 1) and
    then sampled at its default τ: every sample stays finite and within 20× the [-1, 1] data range.
    With the old two-sided scale (±clamp, unbounded shift) the same flow gave |x| ≈ 5e20."""
    torch.manual_seed(0)
    method = tiny_method(depth=4)
    method.losses(_batch(0, (16, 16)), "g")  # ActNorm init on data in [-1, 1]
    for module in method.flow.modules():
        if isinstance(module, AffineCoupling):
            perturb(module, 1.0)
    method.eval()
    source = _batch(1, (16, 16))["source"]
    with torch.no_grad():
        draws = torch.stack([method.sample(source, None, Noise.seeded([4 * k + i for i in range(4)]))
                             for k in range(4)])
    assert torch.isfinite(draws).all() and draws.abs().max() < 20 * 2, float(draws.abs().max())
    assert draws.std(0).mean() > 1e-2  # still a sampler, not a constant
