"""The selective scan alone: medtrans' chunked SSD scan vs ``mambapy``'s parallel scan vs the sequential loop.

Two residual layers ``x + out_proj(scan(in_proj(x)))`` at d_model 64, expand 2 (inner 128 = 4 heads ×
32), d_state 16, batch 4, forward + backward. The Mamba-2 scalar decay per head is a special case of
the Mamba-1 per-channel decay ``mambapy`` scans (the head's rate repeated over its channels and the
state), so the three compute the same function from the same weights: their outputs are compared
(max abs difference, goal ≤ 1e-4). ``mambapy`` (pure PyTorch, ``pip install mambapy``) is optional:
without it that row is skipped with a message. The sequential loop is timed at ``--short-length``
only (its backward takes minutes at 4096), against the chunked scan at the same length.
Run: ``.venv/bin/python benchmarks/bench_scan.py`` (a minute or two on 2 threads).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.nets.scan import chunked_scan, sequential_scan

try:
    from mambapy.pscan import pscan
except ImportError:  # optional: a benchmark reference only, never a medtrans dependency
    pscan = None


def mambapy_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The same recurrence through mambapy's Blelloch scan over (b, L, channels, d_state) tensors."""
    b, length, heads, head_dim = x.shape
    dt_full = dt.repeat_interleave(head_dim, dim=-1)  # (b, L, channels)
    A_full = A.repeat_interleave(head_dim)[:, None].expand(-1, B.shape[-1])
    decay = torch.exp(dt_full[..., None] * A_full)
    inputs = (dt_full * x.reshape(b, length, -1))[..., None] * B[:, :, None, :]
    states = pscan(decay, inputs)
    return (states @ C[..., None]).squeeze(-1).reshape(x.shape)


class ScanLayer(nn.Module):
    def __init__(self, d_model: int, expand: int, d_state: int, head_dim: int) -> None:
        super().__init__()
        inner = expand * d_model
        self.heads, self.head_dim, self.d_state = inner // head_dim, head_dim, d_state
        self.in_proj = nn.Linear(d_model, inner + self.heads + 2 * d_state)
        self.A_log = nn.Parameter(torch.log(torch.linspace(1, 16, self.heads)))
        self.out_proj = nn.Linear(inner, d_model)

    def forward(self, x: Tensor, scan: Callable[..., Tensor]) -> Tensor:
        b, length, _ = x.shape
        sizes = [self.heads * self.head_dim, self.heads, self.d_state, self.d_state]
        u, dt, B, C = self.in_proj(x).split(sizes, -1)
        u = u.reshape(b, length, self.heads, self.head_dim)
        y = scan(u, F.softplus(dt - 3), -torch.exp(self.A_log), B, C)
        return x + self.out_proj(y.reshape(b, length, -1))


def timed(
    layers: nn.ModuleList, x: Tensor, scan: Callable[..., Tensor], repeats: int,
) -> tuple[float, Tensor]:
    """Median forward+backward seconds (after one warm-up call) and the output."""
    times = []
    for _ in range(repeats + 1):
        layers.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = x
        for layer in layers:
            out = layer(out, scan)
        out.square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), out.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--short-length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers = nn.ModuleList(ScanLayer(64, 2, 16, 32) for _ in range(2))

    def chunked(*a: Tensor) -> Tensor:
        return chunked_scan(*a, chunk=args.chunk)

    print(f"2 layers, d_model 64, inner 128 (4 heads x 32), d_state 16, batch {args.batch}, "
          f"chunk {args.chunk}, {args.threads} threads, torch {torch.__version__}; "
          f"median fwd+bwd of {args.repeats} after 1 warm-up")
    x = torch.randn(args.batch, args.length, 64)
    t_chunked, y_chunked = timed(layers, x, chunked, args.repeats)
    print(f"L={args.length:>5} chunked   {t_chunked:8.3f} s")
    if pscan is None:
        print(f"L={args.length:>5} mambapy   skipped: mambapy is not installed (pip install mambapy)")
    else:
        t_mambapy, y_mambapy = timed(layers, x, mambapy_scan, args.repeats)
        print(f"L={args.length:>5} mambapy   {t_mambapy:8.3f} s   "
              f"mambapy / chunked = {t_mambapy / t_chunked:.2f}x"
              f"   max |difference| {(y_mambapy - y_chunked).abs().max().item():.2e}")
    x = x[:, : args.short_length]
    t_short, y_short = timed(layers, x, chunked, args.repeats)
    t_seq, y_seq = timed(layers, x, sequential_scan, 1)
    print(f"L={args.short_length:>5} chunked   {t_short:8.3f} s")
    print(f"L={args.short_length:>5} sequential {t_seq:7.3f} s   "
          f"sequential / chunked = {t_seq / t_short:.1f}x"
          f"   max |difference| {(y_seq - y_short).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
