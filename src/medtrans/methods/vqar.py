"""Stage 2 of the autoregressive family: a transformer prior over a frozen VQ-VAE's target tokens.

The target is the token grid of a trained ``vqvae`` run (loaded with ``init_from: [{network: vqvae,
run: STAGE1, freeze: true}]``); a decoder-only transformer learns p(token_i | BOS, token_<i, source)
by next-token cross-entropy (teacher forcing), conditioned on source features from a small CNN at the
token resolution: the feature of the predicted cell is added to its input (the images are aligned)
and every feature is reachable by cross-attention. Sampling is ancestral, token by token, with
temperature and top-k (Gumbel-max with noise from ``noise``, so draws are reproducible per item), BOS
masked out; the decoder of stage 1 turns the tokens into the image. Samples differ, so ``--samples
N`` gives a std map (blocky at the token grid). The sequence length is fixed by the image size:
there is no step count. As MONAI's ``VQVAETransformerInferer``; van den Oord et al. 2017, Esser et
al. 2021 (VQGAN's transformer stage).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.base import Method
from medtrans.methods.losses import check_choice
from medtrans.methods.schedules import Noise
from medtrans.methods.vqvae import build_autoencoder
from medtrans.nets import blocks
from medtrans.nets.token_prior import GridPositions, Ordering, TokenPrior
from medtrans.nets.vq import Residual
from medtrans.registry import METHODS


def uniform(noise: Noise | None, batch: int, size: int, device: torch.device) -> Tensor:
    """(batch, size) uniforms in [0, 1): item b from ``noise``'s generator b (or the global generator)."""
    if noise is None:
        return torch.rand(batch, size, device=device)
    if len(noise) != batch:
        raise ValueError(f"noise for a batch of {batch} from {len(noise)} streams")
    return torch.stack([torch.rand(size, generator=g) for g in noise.generators]).to(device)


def choose_tokens(logits: Tensor, temperature: float, top_k: int | None, bos: int,
                  noise: Noise | None) -> Tensor:
    """One token per row of ``logits`` (B, K + 1): BOS excluded, top-k, temperature (0 = greedy).

    Gumbel-max (argmax of logits / T + Gumbel noise) draws exactly from softmax(logits / T) and takes
    its randomness from ``noise`` on CPU whatever the device, which ``torch.multinomial`` cannot.
    The uniforms are drawn even when greedy, so every temperature consumes the same stream.
    """
    logits = logits.float().clone()
    logits[:, bos] = float("-inf")
    if top_k is not None and top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    u = uniform(noise, logits.shape[0], logits.shape[1], logits.device)
    if temperature == 0:
        return logits.argmax(1)
    gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-7)))
    return (logits / temperature + gumbel).argmax(1)


class SourceEncoder(nn.Module):
    """Source image → (B, dim, *grid) features at the token resolution (stride ``downsample``), with
    ``depth`` residual blocks there (each cell's feature must tell which of K target codes fits it).

    No normalisation layers: per-image statistics would remove the absolute intensities, which is
    what a contrast's tokens depend on."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int, dim: int, downsample: int,
                 depth: int = 0) -> None:
        super().__init__()
        sd = spatial_dims
        layers: list[nn.Module] = [blocks.ConvNormAct(sd, in_channels, width, norm_name="none", act="silu")]
        for _ in range(int(downsample).bit_length() - 1):
            layers.append(blocks.ConvNormAct(sd, width, width, kernel_size=4, stride=2, padding=1,
                                             norm_name="none", act="silu"))
        layers += [Residual(sd, width, norm="none") for _ in range(int(depth))]
        layers.append(blocks.conv(sd, width, dim, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@METHODS.register("vqar")
class VQAR(Method):
    """Source-conditioned autoregressive prior over the tokens of a frozen vqvae.

    Args:
        autoencoder: the stage-1 vqvae's ``autoencoder`` options, repeated (its weights come from
            ``init_from``; a mismatch is reported tensor by tensor when they are loaded).
        dim, depth, heads, dropout: the transformer (FAMILIES.md: 256–512, 8–12, 8 at full scale).
        source_width: width of the source CNN encoder.
        source_depth: residual blocks of the source encoder at the token resolution.
        positions: ``learned`` (one embedding per grid axis, up to ``max_grid`` cells) or ``sinusoidal``.
        ordering: ``raster`` or ``s_curve`` reading order of the token grid.
        temperature: sampling temperature (0: greedy, deterministic).
        top_k: sample among the k most likely tokens only (None: all K).
        kv_cache: reuse keys/values of earlier tokens when sampling (off: the whole prefix is re-run
            for every token, as MONAI does; the same tokens, for timing the cache).
    """

    stochastic = True
    default_steps = None
    stage_networks = ("vqvae",)
    standalone = False  # trained from a vqvae run (init_from): benchmark entries "all" leave it out

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int = 1,
                 autoencoder: dict[str, Any] | None = None, dim: int = 128, depth: int = 4, heads: int = 4,
                 dropout: float = 0.0, source_width: int = 32, source_depth: int = 0,
                 positions: str = "learned",
                 ordering: str = "raster", max_grid: int = 128, temperature: float = 1.0,
                 top_k: int | None = None, kv_cache: bool = True) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.vqvae = build_autoencoder(spatial_dims, out_channels, autoencoder)
        if source_depth < 0:
            raise MedtransError(None, f"source_depth {source_depth} is negative", "use 0 or more blocks")
        self.source_encoder = SourceEncoder(spatial_dims, in_channels, source_width, dim,
                                            self.vqvae.downsample, source_depth)
        self.positions = GridPositions(positions, spatial_dims, dim, max_grid)
        self.prior = TokenPrior(self.vqvae.num_embeddings, dim, depth, heads, dropout)
        self.ordering = check_choice("ordering", ordering, ("raster", "s_curve"))
        if temperature < 0:
            raise MedtransError(None, f"temperature {temperature} is negative", "use 0 (greedy) or more")
        if top_k is not None and top_k < 1:
            raise MedtransError(None, f"top_k {top_k} is below 1", "use at least 1, or null for all tokens")
        self.temperature, self.top_k, self.kv_cache = float(temperature), top_k, bool(kv_cache)
        #: sequential network passes of the last sample drawn (one prior pass per token + the decoder);
        #: the token count follows the image size, which only sampling knows
        self.passes_per_sample: int | None = None

    def train(self, mode: bool = True) -> VQAR:
        """The stage-1 autoencoder always runs in eval mode: its tokens must not move during stage 2."""
        super().train(mode)
        self.vqvae.eval()
        return self

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        # the vqvae's parameters get no gradient (tokens are an argmin); frozen by init_from they
        # are skipped by the trainer altogether
        return itertools.chain(self.source_encoder.parameters(), self.positions.parameters(),
                               self.prior.parameters(), self.vqvae.parameters())

    def context(self, source: Tensor, order: Ordering) -> Tensor:
        """Source features with their grid positions, in reading order: (B, L, dim)."""
        features = self.source_encoder(source).movedim(1, -1)  # (B, *grid, dim)
        positions = self.positions(order.coordinates().to(source.device))
        return order.sequence(features) + positions.to(features.dtype)

    def token_losses(self, source: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """Next-token cross-entropy of ``tokens`` (B, *grid) given ``source`` (at the image size of the
        grid × downsample), and the teacher-forced greedy accuracy (logged, detached)."""
        order = Ordering(self.ordering, tokens.shape[1:])
        sequence = order.sequence(tokens)
        context = self.context(source, order)
        bos = torch.full_like(sequence[:, :1], self.prior.bos)
        logits = self.prior(torch.cat([bos, sequence[:, :-1]], dim=1), context, context).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), sequence.reshape(-1))
        accuracy = (logits.argmax(-1) == sequence).float().mean()
        return {"ce": ce, "accuracy": accuracy.detach()}

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        stride = self.vqvae.downsample
        source, _ = blocks.pad_to_multiple(batch["source"], stride)
        target, _ = blocks.pad_to_multiple(batch["target"], stride)
        with torch.no_grad():
            tokens = self.vqvae.tokens(target)
        return self.token_losses(source, tokens)

    @torch.no_grad()
    def generate(self, source: Tensor, noise: Noise | None, kv_cache: bool | None = None) -> Tensor:
        """Token grids (B, *grid) sampled for ``source`` (size a multiple of the token stride)."""
        grid = [s // self.vqvae.downsample for s in source.shape[2:]]
        order = Ordering(self.ordering, grid)
        context = self.context(source, order)
        cached = self.kv_cache if kv_cache is None else kv_cache
        cache = self.prior.new_cache() if cached else None
        sequence = torch.full((source.shape[0], 1), self.prior.bos, dtype=torch.long, device=source.device)
        for i in range(context.shape[1]):
            if cache is not None:
                logits = self.prior(sequence[:, -1:], context[:, i:i + 1], context, cache)
            else:
                logits = self.prior(sequence, context[:, :i + 1], context)
            token = choose_tokens(logits[:, -1], self.temperature, self.top_k, self.prior.bos, noise)
            sequence = torch.cat([sequence, token[:, None]], dim=1)
        self.passes_per_sample = context.shape[1] + 1
        return order.to_grid(sequence[:, 1:])

    def evaluations(self, steps: int | None) -> int:
        """Sequential network passes per sample: one prior pass per token plus the decoder (known once a
        sample was drawn; the cost tables ask after predicting)."""
        if self.passes_per_sample is None:
            raise RuntimeError("vqar.evaluations is known only after sampling (the token count follows "
                               "the image size)")
        return self.passes_per_sample

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        padded, size = blocks.pad_to_multiple(source, self.vqvae.downsample)
        return blocks.crop_to(self.vqvae.decode_tokens(self.generate(padded, noise)), size)
