"""UNIT: FAMILIES §9 item 8 — shared blocks are the same objects, and a sign flip (B = −A) is learned
from unpaired batches, with A → A reconstruction."""

from __future__ import annotations

import pytest
import torch

from medtrans.errors import MedtransError
from medtrans.methods.unit import UNIT

BACKBONE = {"name": "resnet", "width": 4, "n_blocks": 2, "n_down": 1}
DISCRIMINATOR = {"name": "patchgan", "width": 8, "n_layers": 1}


def blobs(n: int, g: torch.Generator) -> torch.Tensor:
    """Gaussian bumps (σ 1.5, peak 1) at random centres of 8×8 images: an asymmetric domain, so that
    −A is told apart from A by a discriminator and no shift maps one onto the other."""
    centre = torch.rand(n, 2, generator=g) * 5 + 1.5
    rows, cols = torch.arange(8.0).view(1, 8, 1), torch.arange(8.0).view(1, 1, 8)
    d2 = (rows - centre[:, 0, None, None]) ** 2 + (cols - centre[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * 1.5**2)).unsqueeze(1)


def test_shared_blocks_are_the_same_parameters_in_both_domains(assert_groups_partition) -> None:
    method = UNIT(2, 1, 1, backbone={**BACKBONE, "n_blocks": 4}, discriminator=DISCRIMINATOR, n_shared=2)
    enc_a, enc_b = list(method.encoder_a), list(method.encoder_b)
    dec_a, dec_b = list(method.decoder_a), list(method.decoder_b)
    for a, b in [*zip(enc_a[-2:], enc_b[-2:], strict=True), *zip(dec_a[:2], dec_b[:2], strict=True)]:
        assert all(p is q for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert enc_a[0].parameters().__next__() is not enc_b[0].parameters().__next__()  # private stems
    assert dec_a[-2].weight is not dec_b[-2].weight  # private heads
    assert_groups_partition(method)
    with pytest.raises(MedtransError, match="cannot share 3"):
        UNIT(2, 1, 1, backbone={**BACKBONE, "n_blocks": 4}, discriminator=DISCRIMINATOR, n_shared=3)
    with pytest.raises(MedtransError, match="use backbone name: resnet"):
        UNIT(2, 1, 1, backbone={"name": "unet", "width": 4, "depth": 1}, discriminator=DISCRIMINATOR)


def test_unit_learns_a_sign_flip_from_unpaired_batches(train) -> None:
    torch.manual_seed(0)
    method = UNIT(2, 1, 1, backbone=BACKBONE, discriminator=DISCRIMINATOR, pool_size=0)
    g = torch.Generator().manual_seed(1)
    train(method, [{"source": blobs(4, g), "target": -blobs(4, g)} for _ in range(250)], lr=4e-3)
    a = blobs(64, g)
    with torch.no_grad():
        a_to_b = method.eval().sample(a, None, None)
        mu, size = method.encode(a, "a")
        a_to_a = method.decode(mu, "a", size)
    assert float((a_to_b + a).abs().mean()) < 0.2 * float(a.std())
    assert float((a_to_a - a).abs().mean()) < 0.1


def test_three_d_translation_keeps_odd_sizes() -> None:
    method = UNIT(3, 2, 1, backbone=BACKBONE, discriminator=DISCRIMINATOR)
    source = torch.randn(1, 2, 9, 10, 11)
    with torch.no_grad():
        assert method.eval().sample(source, None, None).shape == (1, 1, 9, 10, 11)
    assert method.losses({"source": source, "target": torch.randn(1, 1, 9, 10, 11)}, "g")["cycle_a"] > 0
