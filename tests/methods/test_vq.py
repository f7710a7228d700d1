"""VQ-VAE and its token prior (FAMILIES.md §9 item 9): codebook usage, dead-code restarts, the prior
learning a deterministic source → token map, sampling (temperature, top-k, BOS, KV cache), orderings."""

from __future__ import annotations

import pytest
import torch

from medtrans.errors import MedtransError
from medtrans.methods.schedules import Noise
from medtrans.methods.vqar import VQAR, choose_tokens
from medtrans.methods.vqvae import VQVAE
from medtrans.nets.token_prior import Ordering
from medtrans.nets.vq import Residual, VQAutoencoder, code_statistics

K = 16
STAGE1 = {"widths": [16], "downsample": 2, "num_embeddings": K, "embedding_dim": 8, "residual_blocks": 1,
          "decay": 0.9}


def patterns(n: int) -> torch.Tensor:
    """8×8 images made of 4×4 cells, each one of the 16 binary 2×2 patterns (uniformly): 16 latents."""
    bits = torch.randint(0, 2, (n, 4, 4, 2, 2)).float() * 2 - 1
    return bits.permute(0, 1, 3, 2, 4).reshape(n, 1, 8, 8)


def fit_vqvae(method: VQVAE, steps: int) -> dict[str, float]:
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    terms = {}
    for step in range(steps):
        x = patterns(8)
        terms = method.losses({"source": x, "target": x}, "g", step)
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(terms.values())).sum().backward()
        optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def held_out_statistics(method: VQVAE) -> tuple[float, float]:
    with torch.no_grad():
        usage, perplexity = code_statistics(method.vqvae.tokens(patterns(64)), K)
    return float(usage), float(perplexity)


def test_codebook_usage_and_perplexity_after_300_steps() -> None:
    torch.manual_seed(0)
    method = VQVAE(2, 1, autoencoder=STAGE1, restart_every=50)
    first = fit_vqvae(method, 1)
    last = fit_vqvae(method, 299)
    usage, perplexity = held_out_statistics(method)
    assert usage > 0.5 and perplexity > 0.5 * K
    assert last["l1"] < 0.6 * first["l1"]
    # the logged statistics are the values themselves, not weighted by 0 (and carry no gradient)
    assert 0 < last["usage"] <= 1 and 1 <= last["perplexity"] <= K and last["psnr"] > 0


def test_code_statistics_are_exact() -> None:
    usage, perplexity = code_statistics(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 8)
    assert float(usage) == 0.5 and float(perplexity) == pytest.approx(4.0)


def test_dead_code_restarts_recover_a_codebook_far_from_the_data() -> None:
    def collapsed(restart_every: int, steps: int) -> tuple[float, float]:
        torch.manual_seed(0)
        method = VQVAE(2, 1, autoencoder=STAGE1, restart_every=restart_every)
        quantizer = method.vqvae.quantizer
        quantizer.codebook.fill_(50.0)  # every code far from the encoder outputs, all equal
        quantizer.code_sum.fill_(50.0)
        fit_vqvae(method, steps)
        return held_out_statistics(method)

    assert collapsed(restart_every=0, steps=30)[0] == 1 / K  # without restarts one code takes everything
    usage, perplexity = collapsed(restart_every=20, steps=120)
    assert usage > 0.5 and perplexity > 0.25 * K


def test_ema_codebook_moves_to_the_mean_of_its_assigned_vectors() -> None:
    ae = VQAutoencoder(2, 1, widths=[4], downsample=1, num_embeddings=2, embedding_dim=1, decay=0.5,
                       epsilon=0.0)
    quantizer = ae.quantizer
    quantizer.codebook.copy_(torch.tensor([[-1.0], [1.0]]))
    quantizer.code_sum.copy_(quantizer.codebook)
    z = torch.tensor([-3.0, -1.0, 2.0, 4.0]).reshape(1, 1, 2, 2)  # code 0 gets {-3, -1}, code 1 {2, 4}
    quantizer(z, update=True)
    # sizes 0.5·1 + 0.5·2 = 1.5, sums 0.5·(∓1) + 0.5·(−4 | 6): codes −2.5/1.5 and 3.5/1.5
    torch.testing.assert_close(quantizer.codebook.flatten(), torch.tensor([-2.5 / 1.5, 3.5 / 1.5]))
    before = quantizer.codebook.clone()
    quantizer(z)  # no update outside training
    assert torch.equal(before, quantizer.codebook)


TINY_STAGE1 = {"widths": [8], "downsample": 2, "num_embeddings": K, "embedding_dim": 4, "residual_blocks": 0}


def tiny_prior(**kwargs: object) -> VQAR:
    return VQAR(2, 1, autoencoder=TINY_STAGE1, dim=32, depth=1, heads=2, source_width=16, **kwargs)


@pytest.mark.parametrize("source_depth", [0, 2])
def test_prior_learns_a_deterministic_source_to_token_map(source_depth: int) -> None:
    torch.manual_seed(0)
    lookup = torch.randperm(K)  # source level → token: a deterministic map the prior must learn

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        level = torch.randint(0, K, (n, 4, 4))
        source = (level.float() / 7.5 - 1)[:, None].repeat_interleave(2, 2).repeat_interleave(2, 3)
        return source, lookup[level]

    method = tiny_prior(temperature=0.0, source_depth=source_depth)
    trained = [p for name, p in method.named_parameters() if not name.startswith("vqvae.")]
    optimizer = torch.optim.Adam(trained, lr=3e-3)
    for _ in range(250):
        source, tokens = batch(16)
        loss = method.token_losses(source, tokens)["ce"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    method.eval()
    source, tokens = batch(32)
    greedy = method.generate(source, Noise.seeded(range(32)))
    assert (greedy == tokens).float().mean() > 0.95
    method.temperature = 1e-4  # temperature → 0: sampling reproduces the greedy tokens
    assert torch.equal(method.generate(source, Noise.seeded(range(100, 132))), greedy)


def test_source_depth_adds_residual_blocks_at_the_token_resolution() -> None:
    shallow, deep = tiny_prior(), tiny_prior(source_depth=3)
    blocks = [m for m in deep.source_encoder.net if isinstance(m, Residual)]
    assert len(blocks) == 3 and not any(isinstance(m, Residual) for m in shallow.source_encoder.net)
    source = torch.randn(2, 1, 8, 8)
    assert deep.source_encoder(source).shape == shallow.source_encoder(source).shape == (2, 32, 4, 4)
    with pytest.raises(MedtransError, match="source_depth -1 is negative"):
        tiny_prior(source_depth=-1)


def test_bos_is_never_sampled_even_when_it_is_the_likeliest() -> None:
    torch.manual_seed(0)
    logits = torch.randn(64, K + 1)
    logits[:, K] = 1e4
    for temperature, top_k in ((1.0, None), (2.0, 3), (0.0, None)):
        chosen = choose_tokens(logits, temperature, top_k, bos=K, noise=Noise.seeded(range(64)))
        assert chosen.max() < K
    method = tiny_prior()
    with torch.no_grad():
        method.prior.head.bias[K] = 1e4
    tokens = method.generate(torch.zeros(3, 1, 8, 8), Noise.seeded([0, 1, 2]))
    assert tokens.shape == (3, 4, 4) and tokens.max() < K


def test_top_k_draws_only_among_the_k_likeliest() -> None:
    logits = torch.arange(K + 1, dtype=torch.float32).repeat(200, 1)  # likeliest: K (BOS), K−1, K−2 …
    chosen = choose_tokens(logits, 5.0, 2, bos=K, noise=Noise.seeded(range(200)))
    assert set(chosen.tolist()) == {K - 1, K - 2}  # BOS removed before the top 2 are taken


@pytest.mark.parametrize("grid", [(3, 4), (2, 3, 4)])
@pytest.mark.parametrize("kind", ["raster", "s_curve"])
def test_ordering_then_inverse_is_the_identity(kind: str, grid: tuple[int, ...]) -> None:
    values = torch.randn(2, *grid, 5)
    order = Ordering(kind, grid)
    assert torch.equal(order.to_grid(order.sequence(values)), values)
    assert sorted(order.permutation.tolist()) == list(range(values[0, ..., 0].numel()))


def test_s_curve_reverses_every_other_row() -> None:
    order = Ordering("s_curve", (3, 3))
    assert order.permutation.tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    assert order.coordinates()[3].tolist() == [1, 2]
    assert Ordering("raster", (2, 2)).permutation.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("spatial_dims, positions", [(2, "learned"), (3, "sinusoidal")])
def test_kv_cache_sampling_equals_sampling_without_it(spatial_dims: int, positions: str) -> None:
    torch.manual_seed(0)
    method = VQAR(spatial_dims, 2, autoencoder=TINY_STAGE1, dim=16, depth=2, heads=2, source_width=8,
                  positions=positions, ordering="s_curve", top_k=8).eval()
    source = torch.randn(2, 2, *([4] * spatial_dims))
    cached = method.generate(source, Noise.seeded([3, 4]), kv_cache=True)
    plain = method.generate(source, Noise.seeded([3, 4]), kv_cache=False)
    assert torch.equal(cached, plain)
    other_seed = method.generate(source, Noise.seeded([5, 6]))
    assert not torch.equal(cached, other_seed)  # the noise decides the draw


def test_vqar_samples_give_a_std_map_and_are_batch_independent() -> None:
    torch.manual_seed(0)
    method = tiny_prior().eval()
    source = torch.randn(3, 1, 6, 6)  # not a multiple of the stride: padded inside, cropped back
    with torch.no_grad():
        mean, std = method.translate(source, samples=3, noise=Noise.seeded([0, 1, 2]))
        alone, _ = method.translate(source[1:2], samples=3, noise=Noise.seeded([1]))
    assert mean.shape == std.shape == (3, 1, 6, 6) and float(std.mean()) > 0
    torch.testing.assert_close(alone, mean[1:2])
    with pytest.raises(MedtransError, match="no step count"):
        method.translate(source, steps=4)
    # cost tables: 6×6 at stride 2 is a 3×3 token grid: 9 sequential prior passes, then the decoder
    assert method.evaluations(None) == 9 + 1


def test_frozen_autoencoder_stays_in_eval_mode() -> None:
    method = tiny_prior().train()
    assert method.prior.training and not method.vqvae.training
