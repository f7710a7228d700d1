"""Backbones and the discriminator: shapes in 2D/3D at awkward sizes, gradients, options, layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medtrans.errors import MedtransError
from medtrans.nets import blocks, build_backbone, build_discriminator
from medtrans.registry import BACKBONES, DISCRIMINATORS

TINY = {
    "unet": {"width": 4, "depth": 2},
    "resnet": {"width": 4, "n_blocks": 1},
}


@pytest.mark.parametrize("name", ["unet", "resnet"])
@pytest.mark.parametrize(
    ("spatial_dims", "size"), [(2, (32, 32)), (2, (33, 21)), (3, (16, 16, 16)), (3, (13, 16, 11))]
)
def test_backbone_keeps_spatial_size_and_maps_channels(name, spatial_dims, size):
    torch.manual_seed(0)
    net = build_backbone({"name": name, **TINY[name]}, spatial_dims, in_channels=2, out_channels=3)
    out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["unet", "resnet"])
def test_odd_size_output_is_the_padded_input_output_cropped_back(name):
    """Sizes not divisible by 2**depth are replicate-padded at the far end and the output cropped."""
    torch.manual_seed(0)
    net = build_backbone({"name": name, **TINY[name], "norm": "none"}, 2, 1, 1).eval()
    x = torch.randn(1, 1, 30, 27)
    padded, size = blocks.pad_to_multiple(x, 4)
    assert padded.shape[2:] == (32, 28) and size == (30, 27)
    assert torch.equal(padded[..., :30, :27], x)
    assert torch.equal(blocks.crop_to(net(padded), size), net(x))


@pytest.mark.parametrize("name", ["unet", "resnet", "patchgan"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradient_reaches_every_parameter(name, spatial_dims):
    torch.manual_seed(0)
    if name == "patchgan":
        net = build_discriminator({"name": name, "width": 4, "n_layers": 2}, spatial_dims, 2)
    else:
        net = build_backbone({"name": name, **TINY[name]}, spatial_dims, 2, 1)
    out = net(torch.randn(2, 2, *[16] * spatial_dims))
    (out - torch.randn_like(out)).square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_unet_widths_double_per_level_up_to_the_cap():
    net = build_backbone({"name": "unet", "width": 8, "depth": 3, "max_width": 16}, 2, 1, 1)
    encoder = [net.stem, *net.down]
    assert [block[0][0].out_channels for block in encoder] == [8, 16, 16, 16]
    assert net.head[0].in_channels == 8


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (33, 21)), (3, (13, 16, 11))])
def test_unet_per_level_widths_set_the_real_channel_counts(spatial_dims, size):
    """``widths`` replaces width·2**level: BasicUNet's schedule keeps the first two levels equal."""
    torch.manual_seed(0)
    net = build_backbone({"name": "unet", "depth": 3, "widths": [6, 6, 10, 12]}, spatial_dims, 2, 3)
    assert net.widths == [6, 6, 10, 12]
    x = torch.randn(1, 2, *size)
    seen = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[1]))
             for block in [net.stem, *net.down]]
    out = net(x)
    for hook in hooks:
        hook.remove()
    assert seen == [6, 6, 10, 12]
    assert [block.up.out_channels for block in net.up] == [10, 6, 6]
    assert net.head[0].in_channels == 6
    assert out.shape == (1, 3, *size) and torch.isfinite(out).all()


def test_unet_widths_of_the_wrong_length_are_a_clear_error():
    with pytest.raises(MedtransError, match=r"must be 5 positive channel counts.*give depth \+ 1 = 5 widths"):
        build_backbone({"name": "unet", "depth": 4, "widths": [32, 32, 64, 128]}, 2, 1, 1)
    with pytest.raises(MedtransError, match="must be 2 positive"):
        build_backbone({"name": "unet", "depth": 1, "widths": [8, 0]}, 2, 1, 1)


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "gelu", "silu", "elu"])
def test_unet_norm_and_activation_options_build_and_run(norm, act):
    net = build_backbone({"name": "unet", "width": 4, "depth": 1, "norm": norm, "activation": act}, 2, 1, 1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 1, 8, 8)


def test_tanh_head_bounds_the_output_and_linear_head_does_not():
    torch.manual_seed(0)
    x = 100 * torch.randn(1, 1, 16, 16)
    for name in ("unet", "resnet"):
        spec = {"name": name, **TINY[name], "norm": "none"}
        assert build_backbone({**spec, "out_activation": "tanh"}, 2, 1, 1)(x).abs().max() <= 1
        assert build_backbone(spec, 2, 1, 1)(x).abs().max() > 1


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    net = build_backbone({"name": "unet", "width": 4, "depth": 1, "dropout": 0.5}, 2, 1, 1)
    x = torch.randn(1, 1, 8, 8)
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_resnet_generator_follows_johnson_layout():
    """c7s1-w, two stride-2 downsamplings (w→2w→4w), n residual blocks at 4w, two upsamplings, c7s1-out."""
    net = build_backbone({"name": "resnet", "width": 8, "n_blocks": 3}, 2, 1, 2)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert convs[0].kernel_size == (7, 7) and convs[0].out_channels == 8
    assert [(c.stride, c.out_channels) for c in convs[1:3]] == [((2, 2), 16), ((2, 2), 32)]
    assert sum(isinstance(m, torch.nn.Conv2d) and m.in_channels == m.out_channels == 32 for m in convs) == 6
    assert convs[-1].kernel_size == (7, 7) and convs[-1].out_channels == 2
    assert convs[-1].padding_mode == "reflect"


@pytest.mark.parametrize(("n_layers", "field"), [(1, 16), (2, 34), (3, 70)])
def test_patchgan_receptive_field_is_the_published_one(n_layers, field):
    """One output logit depends on a field×field input patch (70×70 for the default n_layers=3)."""
    net = build_discriminator({"name": "patchgan", "width": 2, "n_layers": n_layers, "norm": "none"}, 2, 1)
    x = torch.randn(1, 1, 96, 96, requires_grad=True)
    out = net(x)
    i, j = out.shape[2] // 2, out.shape[3] // 2
    out[0, 0, i, j].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    cols = x.grad[0, 0].abs().sum(0).nonzero()
    assert rows.max() - rows.min() + 1 == field
    assert cols.max() - cols.min() + 1 == field


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patchgan_gives_a_map_of_logits(spatial_dims):
    net = build_discriminator({"name": "patchgan", "width": 4, "n_layers": 2}, spatial_dims, 3)
    out = net(torch.randn(2, 3, *[16] * spatial_dims))
    # 16 → 8 → 4 (stride 2) → 3 (4×4, stride 1) → 2 (4×4 head)
    assert out.shape == (2, 1, *[2] * spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_instance_norm_matches_torch_instance_norm_in_train_and_eval(spatial_dims):
    torch.manual_seed(0)
    x = 3 * torch.randn(3, 5, *[6] * spatial_dims, dtype=torch.float64) + 2
    norm = blocks.norm("instance", spatial_dims, 5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    expected = F.instance_norm(x, weight=norm.weight, bias=norm.bias)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm.eval()(x), expected)


@pytest.mark.parametrize("name", ["unet", "resnet"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_reaches_every_convolution(name, spatial_dims):
    """No layer converts back to a contiguous layout (each conversion costs a full copy)."""
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    torch.manual_seed(0)
    net = build_backbone({"name": name, **TINY[name]}, spatial_dims, 1, 1).to(memory_format=fmt)
    seen = []
    for m in net.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            m.register_forward_pre_hook(
                lambda _m, args: seen.append(args[0].is_contiguous(memory_format=fmt))
            )
    x = torch.randn(2, 1, *[16] * spatial_dims)
    out = net(x.contiguous(memory_format=fmt))
    assert seen and all(seen[1:])  # the stem sees the 1-channel input, where both layouts coincide
    torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)


def test_too_small_input_for_the_depth_is_a_clear_error():
    net = build_backbone({"name": "unet", "width": 4, "depth": 4}, 2, 1, 1)
    with pytest.raises(MedtransError, match="smaller depth"):
        net(torch.randn(2, 1, 16, 16))  # 16 / 2**4 = 1 voxel at the bottom


def test_bad_specs_name_what_is_allowed():
    with pytest.raises(MedtransError, match="depth, width"):
        build_backbone({"name": "unet", "levels": 3}, 2, 1, 1)
    with pytest.raises(MedtransError, match="choose one of: .*mamba, resnet, resvit, .*unet"):
        build_backbone({"name": "vnet"}, 2, 1, 1)  # (a test may have registered more backbones)
    with pytest.raises(MedtransError, match="no 'name'"):
        build_backbone({"width": 3}, 2, 1, 1)
    with pytest.raises(MedtransError, match="instance, batch, group, none"):
        build_backbone({"name": "unet", "norm": "layer"}, 2, 1, 1)
    with pytest.raises(MedtransError, match="spatial_dims"):
        build_backbone("unet", 1, 1, 1)
    with pytest.raises(MedtransError, match="n_layers"):
        build_discriminator({"name": "patchgan", "depth": 3}, 2, 1)


def test_registries_list_the_networks():
    assert {"unet", "resnet"} <= set(BACKBONES.names())
    assert "patchgan" in DISCRIMINATORS.names()


@pytest.mark.parametrize("name", ["unet", "resnet"])
def test_convs_drop_their_bias_only_before_a_norm(name):
    """A conv followed by a norm needs no bias (the norm's shift replaces it); without norm all have one."""
    convs = torch.nn.modules.conv._ConvNd
    plain = build_backbone({"name": name, **TINY[name], "norm": None}, 2, 1, 1)
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, convs))
    normed = build_backbone({"name": name, **TINY[name], "norm": "instance"}, 2, 1, 1)
    before_norm = [block[0] for block in normed.modules() if isinstance(block, blocks.ConvNormAct)]
    assert before_norm and all(conv.bias is None for conv in before_norm)
    assert [m for m in normed.modules() if isinstance(m, convs)][-1].bias is not None  # the head
