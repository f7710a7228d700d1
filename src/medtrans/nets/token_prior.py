"""A decoder-only transformer over VQ tokens with cross-attention to source features, and its orderings.

The shape of MONAI generative's ``DecoderOnlyTransformer`` + ``VQVAETransformerInferer`` (BOS = K
prepended, raster ordering, next-token cross-entropy, BOS never sampled), hand-written for two things
MONAI lacks: a key/value cache (MONAI re-runs the whole prefix for every token, L² work per sample)
and positions on the token GRID (per-axis embeddings), so one prior serves every slice size.
Attention is ``F.scaled_dot_product_attention`` (fused kernels on CPU and GPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.errors import MedtransError

ORDERINGS = ("raster", "s_curve")
POSITIONS = ("learned", "sinusoidal")


class Ordering:
    """How a token grid is read as a sequence: ``raster`` (row-major) or ``s_curve`` (odd rows reversed).

    ``permutation[i]`` is the flat grid cell read at sequence position i; ``sequence`` and ``grid``
    are each other's inverse.
    """

    def __init__(self, kind: str, grid: Sequence[int]) -> None:
        if kind not in ORDERINGS:
            raise MedtransError(None, f"unknown ordering {kind!r}", f"choose one of: {', '.join(ORDERINGS)}")
        self.grid = tuple(int(g) for g in grid)
        cells = torch.arange(math.prod(self.grid)).reshape(-1, self.grid[-1])
        if kind == "s_curve":
            cells[1::2] = cells[1::2].flip(-1)
        self.permutation = cells.reshape(-1)
        self.inverse = torch.argsort(self.permutation)

    def sequence(self, values: Tensor) -> Tensor:
        """(B, *grid, ...) → (B, L, ...) in reading order."""
        flat = values.reshape(values.shape[0], -1, *values.shape[1 + len(self.grid):])
        return flat[:, self.permutation.to(values.device)]

    def to_grid(self, sequence: Tensor) -> Tensor:
        """(B, L, ...) → (B, *grid, ...): undoes ``sequence``."""
        flat = sequence[:, self.inverse.to(sequence.device)]
        return flat.reshape(sequence.shape[0], *self.grid, *sequence.shape[2:])

    def coordinates(self) -> Tensor:
        """(L, ndim) grid coordinates of each sequence position."""
        return torch.stack(torch.unravel_index(self.permutation, self.grid), dim=1)


class GridPositions(nn.Module):
    """Position of a token on its grid → (dim,): the sum of one embedding per axis (learned, up to
    ``max_size`` cells per axis) or sinusoids of each axis in its own slice of the features."""

    def __init__(self, kind: str, ndim: int, dim: int, max_size: int = 128) -> None:
        super().__init__()
        if kind not in POSITIONS:
            raise MedtransError(None, f"unknown positions {kind!r}", f"choose one of: {', '.join(POSITIONS)}")
        self.kind, self.ndim, self.dim, self.max_size = kind, ndim, dim, int(max_size)
        if kind == "learned":
            self.axes = nn.ModuleList(nn.Embedding(self.max_size, dim) for _ in range(ndim))
            for table in self.axes:
                nn.init.normal_(table.weight, std=0.02)

    def forward(self, coordinates: Tensor) -> Tensor:
        if int(coordinates.max()) >= self.max_size and self.kind == "learned":
            raise MedtransError(None, f"a token grid of {int(coordinates.max()) + 1} cells per axis is "
                                f"larger than max_grid {self.max_size}", "raise max_grid or downsample more")
        if self.kind == "learned":
            return sum(table(coordinates[:, a]) for a, table in enumerate(self.axes))
        part = (self.dim // self.ndim) // 2 * 2
        frequencies = torch.exp(-math.log(10_000.0) * torch.arange(0, part, 2, device=coordinates.device)
                                / max(part, 1))
        features = []
        for a in range(self.ndim):
            angle = coordinates[:, a, None].float() * frequencies
            features += [angle.sin(), angle.cos()]
        out = torch.cat(features, dim=1)
        return F.pad(out, (0, self.dim - out.shape[1]))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise MedtransError(None, f"attention width {dim} is not divisible by {heads} heads",
                                "choose dim as a multiple of heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.key_value(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        q = self.split(self.query(x))
        h = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), is_causal=causal)
        return self.out(h.transpose(1, 2).reshape(x.shape))


class _Block(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the source context, MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.self_attention, self.cross_attention = _Attention(dim, heads), _Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        h = self.norm_self(x)
        k, v = self.self_attention.keys_values(h)
        if cache is not None:  # x holds new positions only; every earlier one is in the cache
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            if "context_k" not in cache:
                cache["context_k"], cache["context_v"] = self.cross_attention.keys_values(context)
            ck, cv = cache["context_k"], cache["context_v"]
        else:
            ck, cv = self.cross_attention.keys_values(context)
        # with a cache, a single new query sees every cached key: no mask is needed
        causal = cache is None or x.shape[1] > 1
        x = x + self.self_attention.attend(h, k, v, causal=causal)
        x = x + self.cross_attention.attend(self.norm_cross(x), ck, cv, causal=False)
        return x + self.mlp(self.norm_mlp(x))


class TokenPrior(nn.Module):
    """p(token_i | BOS, token_<i, source): logits over K + 1 classes (the last is BOS, never a target).

    ``forward(tokens, aligned, context, cache)``: ``tokens`` (B, n) are the inputs (BOS then the
    previous tokens), ``aligned`` (B, n, dim) the source features (with positions) of the cells being
    predicted, added to the inputs (the source is pixel-aligned), ``context`` (B, L, dim) every source
    feature, for cross-attention. With ``cache`` (one dict per block) only new positions are passed.
    """

    def __init__(self, num_codes: int, dim: int = 128, depth: int = 4, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_codes = int(num_codes)
        self.embedding = nn.Embedding(self.num_codes + 1, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_codes + 1)

    @property
    def bos(self) -> int:
        return self.num_codes

    def new_cache(self) -> list[dict[str, Tensor]]:
        return [{} for _ in self.blocks]

    def forward(self, tokens: Tensor, aligned: Tensor, context: Tensor,
                cache: list[dict[str, Tensor]] | None = None) -> Tensor:
        x = self.embedding(tokens) + aligned
        for i, block in enumerate(self.blocks):
            x = block(x, context, None if cache is None else cache[i])
        return self.head(self.norm(x))
