"""The contract every registered backbone keeps (``net(x, t=None, emb=None)``), checked for every name
in ``BACKBONES``: a new backbone is covered as soon as it is registered and given a tiny spec here."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import tiny

from medtrans.errors import MedtransError
from medtrans.nets import blocks
from medtrans.registry import BACKBONES


@pytest.mark.parametrize("name", BACKBONES.shipped())
@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (32, 32)), (2, (33, 21)), (3, (9, 10, 11))])
def test_output_has_the_input_size_with_and_without_t(name, spatial_dims, size):
    net = tiny(name, spatial_dims=spatial_dims)
    x = torch.randn(2, 2, *size)
    for t in (None, torch.tensor([0.1, 0.9])):
        out = net(x, t)
        assert out.shape == (2, 3, *size)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", BACKBONES.shipped())
def test_output_changes_with_t_and_ignores_the_time_path_without_it(name):
    net = tiny(name).eval()
    x = torch.randn(2, 2, 16, 16)
    early, late = net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.9, 0.9]))
    assert (early - late).abs().max() > 1e-4
    # t=None: exactly the net built without time conditioning, given the same shared weights
    plain = tiny(name, time_dim=0, seed=1).eval()
    timed_keys = {f"{m_name}.{p}" for m_name, m in net.named_modules(remove_duplicate=False)
                  if isinstance(m, blocks.FiLM | blocks.TimeEmbedding) for p, _ in m.named_parameters()}
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and set(unexpected) == timed_keys
    torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", BACKBONES.shipped())
def test_a_net_without_time_conditioning_refuses_t(name):
    net = tiny(name, time_dim=0)
    with pytest.raises(MedtransError, match="time_dim"):
        net(torch.randn(1, 2, 16, 16), torch.tensor([0.5]))


@pytest.mark.parametrize("name", BACKBONES.shipped())
def test_same_seed_same_weights_same_output(name):
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([0.2, 0.7])
    a, b = tiny(name, seed=3), tiny(name, seed=3)
    torch.testing.assert_close(a(x, t), b(x, t), rtol=0, atol=0)
    assert not torch.equal(tiny(name, seed=4)(x, t), a(x, t))


@pytest.mark.parametrize("name", BACKBONES.shipped())
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_every_parameter_when_t_is_given(name, spatial_dims):
    net = tiny(name, spatial_dims=spatial_dims)
    out = net(torch.randn(2, 2, *[12] * spatial_dims), torch.tensor([0.3, 0.6]))
    (out - torch.randn_like(out)).square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
