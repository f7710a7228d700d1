"""CycleGAN: unpaired training, the published objective, the image pool's exact behaviour, resumable state."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medtrans.methods.cyclegan import ImagePool
from medtrans.methods.losses import reconstruction
from medtrans.registry import METHODS

TINY = {
    "backbone": {"name": "resnet", "width": 4, "n_blocks": 1},
    "discriminator": {"name": "patchgan", "width": 4, "n_layers": 2},
}


def make(**kwargs):
    return METHODS.get("cyclegan")(
        **{"spatial_dims": 2, "in_channels": 1, "out_channels": 1, **TINY, **kwargs}
    )


def blobs(seed: int, n: int, size: int = 32, dark_background: bool = True) -> torch.Tensor:
    """Images of one domain: Gaussian blobs at random places, bright on dark (A) or dark on bright (B)."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.arange(size, dtype=torch.float32)
    centres = torch.rand(n, 2, generator=gen) * size
    d2 = (axis[None, :, None] - centres[:, 0, None, None]) ** 2 + (
        axis[None, None, :] - centres[:, 1, None, None]
    ) ** 2
    image = 2 * torch.exp(-d2 / 40) - 1
    return (image if dark_background else -image)[:, None]


def unpaired_batches(steps: int) -> list[dict[str, torch.Tensor]]:
    """Source and target of each batch are different images (different seeds), as in unpaired data."""
    return [
        {"source": blobs(2 * i, 2), "target": blobs(2 * i + 1, 2, dark_background=False)}
        for i in range(steps)
    ]


def test_contract(assert_groups_partition):
    method = make(in_channels=2)
    assert not method.paired and method.groups == ("g", "d")
    assert_groups_partition(method)
    assert method.optimizer_settings("d") == {"betas": (0.5, 0.999)}
    source = torch.randn(2, 2, 20, 20)
    pred, uncertainty = method.translate(source)
    assert uncertainty is None and torch.equal(pred, method.g_ab(source))
    assert method.g_ba(pred).shape == source.shape


def test_trains_on_unpaired_data_with_finite_losses(train):
    torch.manual_seed(0)
    method = make(pool_size=3)
    history = train(method, unpaired_batches(12), lr=2e-3)
    expected = {"g/gan_ab", "g/gan_ba", "g/cycle_a", "g/cycle_b", "g/idt_ab", "g/idt_ba", "d/a", "d/b"}
    assert set(history[0]) == expected
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in history)
    cycle = [step["g/cycle_a"] + step["g/cycle_b"] for step in history]
    assert cycle[-1] < cycle[0] / 2, cycle
    assert len(method.pool_a.images) == len(method.pool_b.images) == 3


def test_objective_terms_follow_the_paper():
    torch.manual_seed(0)
    method = make(lambda_a=3.0, lambda_b=5.0, lambda_identity=0.5)
    batch = unpaired_batches(1)[0]
    a, b = batch["source"], batch["target"]
    terms = method.losses(batch, "g")
    expected = {
        "cycle_a": 3.0 * reconstruction(method.g_ba(method.g_ab(a)), a),
        "cycle_b": 5.0 * reconstruction(method.g_ab(method.g_ba(b)), b),
        "idt_ab": 0.5 * 5.0 * reconstruction(method.g_ab(b), b),
        "idt_ba": 0.5 * 3.0 * reconstruction(method.g_ba(a), a),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_identity_terms_are_off_when_channel_counts_differ():
    method = make(in_channels=2)
    assert method.lambda_identity == 0.0
    batch = {"source": torch.randn(2, 2, 24, 24), "target": torch.randn(2, 1, 24, 24)}
    assert set(method.losses(batch, "g")) == {"gan_ab", "gan_ba", "cycle_a", "cycle_b"}
    assert set(method.losses(batch, "d")) == {"a", "b"}


def test_discriminator_step_sees_pooled_detached_fakes():
    torch.manual_seed(0)
    method = make(pool_size=50)
    batch = unpaired_batches(1)[0]
    method.losses(batch, "g")
    terms = method.losses(batch, "d")
    sum(terms.values()).backward()
    assert all(p.grad is None for net in (method.g_ab, method.g_ba) for p in net.parameters())
    assert all(p.grad is not None for net in (method.d_a, method.d_b) for p in net.parameters())
    # the pool of domain B holds the A→B fakes of this step
    torch.testing.assert_close(torch.stack(method.pool_b.images), method.g_ab(batch["source"]).detach())


def test_pool_fills_then_swaps_with_probability_one_half_in_a_seeded_order():
    pool = ImagePool(size=2, seed=7)
    first = torch.arange(2.0).reshape(2, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: the batch comes back unchanged
    # once full, each image draws u ~ U(0, 1) from the pool's generator; u > 0.5 draws a slot k and swaps
    draws = torch.Generator().manual_seed(7)
    stored = [first[0], first[1]]
    swapped = 0
    for i in range(2, 202):
        image = torch.full((1, 1, 1, 1), float(i))
        if torch.rand(1, generator=draws).item() > 0.5:
            k = int(torch.randint(2, (1,), generator=draws).item())
            expected, stored[k] = stored[k], image[0]
            swapped += 1
        else:
            expected = image[0]
        assert torch.equal(pool.query(image)[0], expected), i
    assert 80 < swapped < 120
    assert torch.equal(torch.stack(pool.images), torch.stack(stored))


def test_pool_is_deterministic_per_seed_and_can_be_off():
    images = torch.randn(40, 1, 2, 2)

    def run(seed: int) -> list[torch.Tensor]:
        pool = ImagePool(4, seed)
        return [pool.query(images[i : i + 4]) for i in range(0, 40, 4)]

    same, again, other = run(3), run(3), run(4)
    assert all(torch.equal(x, y) for x, y in zip(same, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(same, other, strict=True))
    assert torch.equal(ImagePool(0).query(images), images)


def test_state_survives_a_safetensors_checkpoint(tmp_path, train):
    """Weights, pool contents and pool random state resume exactly, through the checkpoint file format."""
    torch.manual_seed(0)
    method = make(pool_size=3)
    train(method, unpaired_batches(3), lr=1e-3)
    save_file({k: v.contiguous() for k, v in method.state_dict().items()}, tmp_path / "state.safetensors")
    resumed = make(pool_size=3)
    resumed.load_state_dict(load_file(tmp_path / "state.safetensors"))
    for batch in unpaired_batches(6)[3:]:
        for group in ("g", "d"):
            expected, got = method.losses(batch, group), resumed.losses(batch, group)
            assert {k: v.item() for k, v in got.items()} == {k: v.item() for k, v in expected.items()}


def test_ema_of_the_trainer_averages_it(train):
    """The trainer's EMA (torch AveragedModel over parameters and buffers) copes with the pools."""
    torch.manual_seed(0)
    method = make(pool_size=2, backbone={"name": "resnet", "width": 4, "n_blocks": 1, "norm": "batch"})
    ema = AveragedModel(method, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    for batch in unpaired_batches(2):
        train(method, [batch], lr=1e-3)
        ema.update_parameters(method)
    restored = make(pool_size=2, backbone={"name": "resnet", "width": 4, "n_blocks": 1, "norm": "batch"})
    restored.load_state_dict(ema.module.state_dict())
    assert torch.isfinite(restored.translate(torch.randn(1, 1, 16, 16))[0]).all()
