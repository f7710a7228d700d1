"""pix2pix: the objective as published, the discriminator learns, groups and caching behave."""

from __future__ import annotations

import pytest
import torch

from medtrans.errors import MedtransError
from medtrans.methods.losses import gan_loss
from medtrans.registry import METHODS

TINY = {
    "backbone": {"name": "unet", "width": 8, "depth": 2},
    "discriminator": {"name": "patchgan", "width": 8, "n_layers": 2},
}


def make(**kwargs):
    return METHODS.get("pix2pix")(
        **{"spatial_dims": 2, "in_channels": 1, "out_channels": 1, **TINY, **kwargs}
    )


def toy_batch(seed: int, size: int = 32, spatial_dims: int = 2) -> dict[str, torch.Tensor]:
    """Paired toy task: the target is the negated source."""
    gen = torch.Generator().manual_seed(seed)
    source = torch.rand(4, 1, *[size] * spatial_dims, generator=gen) * 2 - 1
    return {"source": source, "target": -source}


def test_contract(assert_groups_partition):
    method = make(in_channels=2)
    assert method.groups == ("g", "d") and method.paired
    assert_groups_partition(method)
    assert method.optimizer_settings("g") == method.optimizer_settings("d") == {"betas": (0.5, 0.999)}
    assert method.discriminator.model[0].in_channels == 3  # judges source (2) and image (1) together
    pred, uncertainty = method.translate(torch.randn(2, 2, 24, 24))
    assert pred.shape == (2, 1, 24, 24) and uncertainty is None
    with pytest.raises(MedtransError, match="lsgan, vanilla"):
        make(gan_loss="hinge")


def test_generator_terms_are_gan_plus_lambda_l1():
    torch.manual_seed(0)
    method = make(lambda_l1=7.0)
    batch = toy_batch(0)
    fake = method.translate(batch["source"])[0]
    terms = method.losses(batch, "g")
    assert set(terms) == {"gan", "l1"}
    assert terms["l1"].item() == pytest.approx(7.0 * (fake - batch["target"]).abs().mean().item(), rel=1e-5)
    judged = method.discriminator(torch.cat([batch["source"], fake], 1))
    assert terms["gan"].item() == pytest.approx(gan_loss(judged, True).item(), rel=1e-5)


def test_masked_l1_ignores_the_target_outside_the_mask():
    torch.manual_seed(0)
    method = make(masked=True, lambda_l1=1.0)
    batch = toy_batch(0)
    mask = torch.zeros_like(batch["target"])
    mask[..., 8:20, 4:30] = 1
    fake = method.translate(batch["source"])[0]
    expected = (fake - batch["target"])[mask.bool()].abs().mean()
    wild = batch["target"].masked_fill(mask == 0, 1e6)
    for target in (batch["target"], wild):
        l1 = method.losses({"source": batch["source"], "target": target, "mask": mask}, "g")["l1"]
        assert l1.item() == pytest.approx(expected.item(), rel=1e-5)


def test_discriminator_step_reuses_the_detached_fake_and_is_halved():
    torch.manual_seed(0)
    method = make()
    batch = toy_batch(0)
    fake = method.translate(batch["source"])[0].detach()
    method.losses(batch, "g")
    terms = method.losses(batch, "d")
    real_logits = method.discriminator(torch.cat([batch["source"], batch["target"]], 1))
    fake_logits = method.discriminator(torch.cat([batch["source"], fake], 1))
    assert terms["real"].item() == pytest.approx(0.5 * gan_loss(real_logits, True).item(), rel=1e-5)
    assert terms["fake"].item() == pytest.approx(0.5 * gan_loss(fake_logits, False).item(), rel=1e-5)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in method.generator.parameters())
    assert all(p.grad is not None for p in method.discriminator.parameters())


@pytest.mark.parametrize("kind", ["lsgan", "vanilla"])
def test_discriminator_learns_to_tell_real_from_fake(train, kind):
    torch.manual_seed(0)
    method = make(gan_loss=kind)
    history = train(method, [toy_batch(i) for i in range(30)], lr=3e-3, groups=("d",))
    first, last = (step["d/real"] + step["d/fake"] for step in (history[0], history[-1]))
    assert last < first / 3, (first, last)
    held_out = toy_batch(100)
    with torch.no_grad():
        fake = method.translate(held_out["source"])[0]
        real_score = method.discriminator(torch.cat([held_out["source"], held_out["target"]], 1)).mean()
        fake_score = method.discriminator(torch.cat([held_out["source"], fake], 1)).mean()
    threshold = 0.5 if kind == "lsgan" else 0.0  # midway between the targets (1/0, or logits ±)
    assert real_score > threshold > fake_score


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_alternating_training_gives_finite_losses_and_improves_l1(train, spatial_dims):
    torch.manual_seed(0)
    size = 32 if spatial_dims == 2 else 16
    method = make(spatial_dims=spatial_dims)
    history = train(method, [toy_batch(i, size, spatial_dims) for i in range(15)], lr=5e-3)
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in history)
    assert set(history[0]) == {"g/gan", "g/l1", "d/real", "d/fake"}
    assert history[-1]["g/l1"] < history[0]["g/l1"] / 2
