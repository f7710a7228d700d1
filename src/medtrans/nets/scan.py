"""Selective state-space scans in plain PyTorch (Mamba-2 "SSD" form) and scan orders over feature maps.

The recurrence, per head h with a scalar decay (Dao & Gu, ICML 2024), for t = 1..L:

    state_t = exp(dt_t · A_h) · state_{t-1} + dt_t · x_t ⊗ B_t        (state: head_dim × d_state)
    y_t     = state_t · C_t

``chunked_scan`` computes it in chunks of T steps: inside a chunk the output is a masked matmul with
the T × T decay matrix exp(segsum(dt·A)); between chunks only the L/T chunk-end states are carried, by
a second small matmul. Everything is einsum/cumsum/exp, so the same code runs on CPU and CUDA, in fp32
and under bf16 autocast, with nothing to compile (no ``mamba-ssm``). ``sequential_scan`` is the
step-by-step loop, kept as the oracle the tests compare against (far too slow to train with).

Scan orders flatten a (D×)H×W map into a sequence along different paths (rows, columns, each axis of a
volume, their reversals, a spiral), as index tensors with their inverse (gather, never a dense
permutation matrix), for any size.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from medtrans.errors import MedtransError

SCANS = ("chunked", "sequential")


def sequential_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The recurrence one step at a time (the oracle).

    Args: x (b, L, H, P) inputs per head; dt (b, L, H) positive step sizes; A broadcastable to
    (b, L, H), negative decay rates; B, C (b, L, N) input and output projections shared by the heads.
    Returns y (b, L, H, P).
    """
    b, length, heads, head_dim = x.shape
    decay = torch.exp(dt * A)
    state = x.new_zeros(b, heads, head_dim, B.shape[-1])
    ys = []
    for i in range(length):
        update = (dt[:, i, :, None] * x[:, i])[..., None] * B[:, i, None, None, :]
        state = decay[:, i, :, None, None] * state + update
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, i]))
    return torch.stack(ys, dim=1)


def _segsum(a: Tensor) -> Tensor:
    """(…, T) → (…, T, T): out[i, j] = a[j+1] + … + a[i] for j ≤ i, −inf above the diagonal.

    Built from masked cumulative sums rather than a difference of one cumsum, which loses precision
    (the "stable segsum" of the Mamba-2 reference code).
    """
    length = a.shape[-1]
    a = a[..., None].expand(*a.shape, length)
    below = torch.tril(torch.ones(length, length, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(a.masked_fill(~below, 0), dim=-2)
    keep = torch.tril(torch.ones(length, length, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~keep, float("-inf"))


def chunked_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int = 64) -> Tensor:
    """The same recurrence as ``sequential_scan``, computed chunk by chunk with matmuls.

    A length not divisible by ``chunk`` is padded with dt = 0 and x = 0 at the end (decay 1, no input:
    the earlier outputs are unchanged) and cropped. Decays are summed and exponentiated in (at least) fp32
    even under autocast (a bf16 cumsum over 64 steps loses the small decays); the matmuls follow autocast.
    """
    b, length, heads, head_dim = x.shape
    pad = (-length) % chunk
    exact = torch.promote_types(dt.dtype, torch.float32)  # fp32 for bf16/fp16, float64 stays float64
    log_decay = (dt.to(exact) * A.to(exact)).expand(b, length, heads)
    xdt = x * dt[..., None].to(x.dtype)
    if pad:
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        xdt, B, C = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk
    xdt = xdt.reshape(b, n_chunks, chunk, heads, head_dim)
    B = B.reshape(b, n_chunks, chunk, -1)
    C = C.reshape(b, n_chunks, chunk, -1)
    a = log_decay.reshape(b, n_chunks, chunk, heads).permute(0, 3, 1, 2)  # (b, H, chunks, T)
    a_cum = torch.cumsum(a, dim=-1)
    # 1. within each chunk: y_i = Σ_{j≤i} (C_i·B_j) exp(a_{j+1}+…+a_i) x_j dt_j
    within = torch.exp(_segsum(a)).to(xdt.dtype)  # (b, H, chunks, T, T)
    y = torch.einsum("bcln,bcsn,bhcls,bcshp->bclhp", C, B, within, xdt)
    # 2. each chunk's final state from its own inputs
    to_end = torch.exp(a_cum[..., -1:] - a_cum).to(xdt.dtype)
    states = torch.einsum("bcln,bhcl,bclhp->bchpn", B, to_end, xdt)
    # 3. carry the states across chunks (a recurrence over n_chunks, as one (chunks+1)² matmul)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    across = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0)))).to(xdt.dtype)  # (b, H, chunks+1, chunks+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", across, states)[:, :-1]
    # 4. the carried-in state's contribution to each position of the chunk
    from_start = torch.exp(a_cum).to(xdt.dtype)
    y = y + torch.einsum("bcln,bchpn,bhcl->bclhp", C, states, from_start)
    return y.reshape(b, n_chunks * chunk, heads, head_dim)[:, :length]


def scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, method: str = "chunked",
         chunk: int = 64) -> Tensor:
    """Dispatch to ``chunked_scan`` (default) or ``sequential_scan`` by name."""
    if method == "chunked":
        return chunked_scan(x, dt, A, B, C, chunk)
    if method == "sequential":
        return sequential_scan(x, dt, A, B, C)
    raise MedtransError(None, f"unknown scan {method!r}", f"choose one of: {', '.join(SCANS)}")


# ---------------------------------------------------------------------------------------- scan orders
ORDERS = ("cross", "spiral")


def _axis_fastest(shape: tuple[int, ...], axis: int) -> Tensor:
    """Flat (row-major) indices visited with ``axis`` varying fastest, the other axes in their order."""
    grid = torch.arange(int(torch.tensor(shape).prod())).reshape(shape)
    others = [d for d in range(len(shape)) if d != axis]
    return grid.permute(*others, axis).reshape(-1)


def _spiral(shape: tuple[int, ...]) -> Tensor:
    """Flat indices of an inward clockwise spiral over an H×W grid (I2I-Mamba's order), any H, W."""
    grid = torch.arange(shape[0] * shape[1]).reshape(shape)
    path = []
    while grid.numel():
        path.append(grid[0])
        grid = grid[1:].T.flip(0)  # rotate the rest counter-clockwise so its next edge is the top row
    return torch.cat(path)


@functools.lru_cache(maxsize=64)
def scan_orders(shape: tuple[int, ...], kind: str = "cross") -> tuple[Tensor, ...]:
    """Index tensors, one per order, each a permutation of range(prod(shape)).

    ``cross``: every axis as the fastest-varying one, forward and reversed (VMamba's 4-way cross scan in
    2D: rows, columns, both reversed; 6 orders in 3D). ``spiral`` (2D only): the inward spiral and its
    reversal, as in I2I-Mamba. Cached per shape: built once per feature-map size.
    """
    shape = tuple(int(s) for s in shape)
    if kind == "cross":
        forward = [_axis_fastest(shape, axis) for axis in reversed(range(len(shape)))]
    elif kind == "spiral" and len(shape) == 2:
        forward = [_spiral(shape)]
    else:
        raise MedtransError(None, f"scan order {kind!r} does not exist for {len(shape)}D maps",
                            f"choose one of: {', '.join(ORDERS)} (spiral is 2D only)")
    return tuple(o for f in forward for o in (f, f.flip(0)))


def inverse_order(order: Tensor) -> Tensor:
    """The permutation undoing ``order``: ``seq[..., inverse_order(o)]`` restores the flat map."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse
