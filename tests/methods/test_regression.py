"""The regression baseline: it learns, its mask option ignores what lies outside, SSIM term, contract."""

from __future__ import annotations

import pytest
import torch

from medtrans.errors import MedtransError
from medtrans.methods.losses import ssim
from medtrans.registry import METHODS

TINY_UNET = {"name": "unet", "width": 8, "depth": 2}


def make(**kwargs):
    defaults = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "backbone": TINY_UNET}
    return METHODS.get("regression")(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    ("loss", "backbone"), [("l1", TINY_UNET), ("l2", {"name": "resnet", "width": 8, "n_blocks": 1})]
)
def test_learns_an_affine_intensity_map(train, loss, backbone):
    torch.manual_seed(0)
    source = torch.rand(4, 1, 32, 32) * 2 - 1
    batch = {"source": source, "target": 0.5 - 0.8 * source}
    method = make(loss=loss, backbone=backbone)
    history = train(method, [batch] * 80, lr=3e-3)
    first, last = history[0][f"g/{loss}"], history[-1][f"g/{loss}"]
    assert last < first / 5, (first, last)


def test_learns_in_3d(train):
    torch.manual_seed(0)
    source = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    batch = {"source": source, "target": 2 * source + 0.1}
    method = make(spatial_dims=3, backbone={"name": "unet", "width": 8, "depth": 2})
    history = train(method, [batch] * 30, lr=1e-2)
    assert history[-1]["g/l1"] < history[0]["g/l1"] / 5


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_masked_loss_ignores_values_outside_the_mask(loss):
    torch.manual_seed(0)
    method = make(loss=loss, masked=True)
    source, target = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:10, 2:12] = 1
    pred = method.translate(source)[0]
    diff = (pred - target)[mask.bool()]
    expected = diff.abs().mean() if loss == "l1" else diff.square().mean()
    value = method.losses({"source": source, "target": target, "mask": mask}, "g")[loss]
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    wild = target.clone()
    wild[mask == 0] = 1e6
    again = method.losses({"source": source, "target": wild, "mask": mask}, "g")[loss]
    assert again.item() == pytest.approx(value.item(), rel=1e-6)
    unmasked = make(loss=loss, masked=False)
    unmasked.load_state_dict(method.state_dict())
    assert unmasked.losses({"source": source, "target": wild, "mask": mask}, "g")[loss] > 1e3


def test_ssim_term_is_weighted_one_minus_ssim():
    torch.manual_seed(0)
    method = make(ssim_weight=0.3)
    batch = {"source": torch.randn(2, 1, 16, 16), "target": torch.randn(2, 1, 16, 16)}
    terms = method.losses(batch, "g")
    expected = 0.3 * (1 - ssim(method.translate(batch["source"])[0], batch["target"]))
    assert set(terms) == {"l1", "ssim"}
    assert terms["ssim"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(make().losses(batch, "g")) == {"l1"}


def test_contract_groups_translate_and_bad_options(assert_groups_partition):
    method = make(in_channels=2)
    assert method.groups == ("g",) and method.paired
    assert_groups_partition(method)
    pred, uncertainty = method.translate(torch.randn(3, 2, 20, 20))
    assert pred.shape == (3, 1, 20, 20) and uncertainty is None
    with pytest.raises(MedtransError, match="l1, l2"):
        make(loss="huber")
    with pytest.raises(MedtransError, match="group"):
        method.losses({"source": torch.randn(1, 2, 8, 8), "target": torch.randn(1, 1, 8, 8)}, "d")


def test_bf16_autocast_losses_are_fp32_and_finite():
    method = make(ssim_weight=1.0).to(memory_format=torch.channels_last)
    batch = {"source": torch.randn(2, 1, 16, 16), "target": torch.randn(2, 1, 16, 16)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method.losses(batch, "g")
    for value in terms.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)
