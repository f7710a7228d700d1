"""ResViT-like and Mamba-like backbones: their own options, bf16, and a short training on the phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_nets import TINY, phantom_pairs, tiny

from medtrans.nets import build_backbone
from medtrans.nets.resvit import TransformerPath, sincos_positions


def test_transformer_positions_share_one_transformer_only_when_asked():
    shared = tiny("resvit")
    paths = [m.transformer for m in shared.modules() if isinstance(m, TransformerPath)]
    assert len(paths) == 2 and paths[0] is paths[1]
    separate = tiny("resvit", share_transformer=False)
    others = [m.transformer for m in separate.modules() if isinstance(m, TransformerPath)]
    assert others[0] is not others[1]
    per_transformer = sum(p.numel() for p in others[0].parameters())
    count = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert count == per_transformer


@pytest.mark.parametrize(("size", "stride", "tokens"), [(64, 2, 64), (64, 1, 256), (40, 2, 25)])
def test_token_stride_bounds_the_token_count(size, stride, tokens):
    """1/4 resolution from the encoder, then ``token_stride``: 64² → 16² → 8² tokens at stride 2."""
    net = tiny("resvit", token_stride=stride)
    seen = []
    net.bottleneck[0].transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    net(torch.randn(1, 2, size, size))
    assert seen == [tokens, tokens]  # both transformer positions (sharing one transformer)


def test_position_code_is_sinusoidal_per_axis_and_distinct_per_token():
    code = sincos_positions((3, 5), 16, torch.device("cpu"))  # 16 // (2·2) = 4 frequencies per axis
    assert code.shape == (15, 16)
    row, col = 1, 4
    token = row * 5 + col
    freqs = [math.exp(-math.log(10000.0) * k / 4) for k in range(4)]
    expected = [math.sin(row * f) for f in freqs] + [math.cos(row * f) for f in freqs]
    expected += [math.sin(col * f) for f in freqs] + [math.cos(col * f) for f in freqs]
    torch.testing.assert_close(code[token], torch.tensor(expected))
    assert torch.cdist(code, code).add(torch.eye(15)).min() > 0.1  # no two tokens share a code
    code_3d = sincos_positions((2, 3, 4), 16, torch.device("cpu"))
    assert code_3d[:, 12:].abs().sum() == 0  # 16 // 6 = 2 frequencies × sin, cos × 3 axes; the rest is 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mamba_with_the_chunked_scan_equals_the_sequential_oracle(spatial_dims):
    x, t = torch.randn(2, 2, *[12] * spatial_dims), torch.tensor([0.2, 0.8])
    chunked = tiny("mamba", spatial_dims=spatial_dims, chunk=4)
    sequential = tiny("mamba", spatial_dims=spatial_dims, scan="sequential")
    sequential.load_state_dict(chunked.state_dict())
    torch.testing.assert_close(chunked(x, t), sequential(x, t), rtol=0, atol=1e-4)


def test_mamba_spiral_order_runs_in_2d_and_is_refused_in_3d():
    assert tiny("mamba", orders="spiral")(torch.randn(1, 2, 13, 11)).shape == (1, 3, 13, 11)
    with pytest.raises(Exception, match="2D only"):
        tiny("mamba", spatial_dims=3, orders="spiral")


@pytest.mark.parametrize("name", ["resvit", "mamba"])
def test_bf16_autocast_and_channels_last_stay_close_to_fp32(name):
    net = tiny(name)
    x, t = torch.randn(2, 2, 32, 32), torch.tensor([0.3, 0.6])
    ref = net(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t)
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).norm() / ref.norm()) < 0.05


@pytest.mark.parametrize("name", ["resvit", "mamba"])
def test_short_regression_training_on_the_phantom_lowers_the_loss(name):
    source, target = phantom_pairs(4)
    torch.manual_seed(0)
    net = build_backbone({"name": name, **TINY[name], "width": 8}, 2, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = (net(source) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
