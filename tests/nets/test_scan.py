"""The chunked selective scan against the step-by-step oracle, and the scan orders over feature maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medtrans.errors import MedtransError
from medtrans.nets.scan import chunked_scan, inverse_order, scan_orders, sequential_scan


def _inputs(length: int, dtype: torch.dtype = torch.float32, batch: int = 2, heads: int = 3,
            head_dim: int = 4, d_state: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(batch, length, heads, generator=g, dtype=dtype))
    A = -torch.empty(heads, dtype=dtype).uniform_(0.05, 2.0, generator=g)
    B = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    return x, dt, A, B, C


@pytest.mark.parametrize(("length", "chunk"), [(256, 32), (250, 32), (37, 8), (5, 64)])
def test_chunked_scan_equals_the_sequential_oracle(length, chunk):
    """Including lengths that are not a multiple of the chunk (padded with no-op steps, cropped)."""
    inputs = _inputs(length)
    expected = sequential_scan(*inputs)
    assert expected.abs().max() > 1  # a scan that returned zeros would not pass by accident
    torch.testing.assert_close(chunked_scan(*inputs, chunk=chunk), expected, rtol=0, atol=1e-4)


def test_sequential_oracle_is_the_recurrence_written_out():
    """Two steps by hand: state_1 = dt1·x1⊗B1, state_2 = e^{dt2·A}·state_1 + dt2·x2⊗B2, y = state·C."""
    x, dt, A, B, C = _inputs(2, batch=1, heads=1, head_dim=1, d_state=2, dtype=torch.float64)
    s1 = dt[0, 0, 0] * x[0, 0, 0, 0] * B[0, 0]
    s2 = torch.exp(dt[0, 1, 0] * A[0]) * s1 + dt[0, 1, 0] * x[0, 1, 0, 0] * B[0, 1]
    y = sequential_scan(x, dt, A, B, C)
    torch.testing.assert_close(y[0, :, 0, 0], torch.stack([s1 @ C[0, 0], s2 @ C[0, 1]]))


def test_chunked_scan_passes_gradcheck_in_float64():
    inputs = [t.requires_grad_() for t in _inputs(16, torch.float64, batch=1, heads=2, head_dim=2, d_state=3)]
    assert torch.autograd.gradcheck(lambda *a: chunked_scan(*a, chunk=4), inputs)
    # and its gradients are the oracle's
    grads = torch.autograd.grad(chunked_scan(*inputs, chunk=4).square().sum(), inputs)
    expected = torch.autograd.grad(sequential_scan(*inputs).square().sum(), inputs)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_chunked_scan_runs_under_bf16_autocast_close_to_fp32():
    inputs = _inputs(128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = chunked_scan(*inputs, chunk=32)
    ref = chunked_scan(*inputs, chunk=32)
    assert torch.isfinite(low).all()
    assert ((low.float() - ref).norm() / ref.norm()) < 0.05


@pytest.mark.parametrize("shape", [(5, 7), (1, 9), (3, 5, 7), (2, 1, 3)])
@pytest.mark.parametrize("kind", ["cross", "spiral"])
def test_every_scan_order_then_its_inverse_is_the_identity(shape, kind):
    if kind == "spiral" and len(shape) == 3:
        with pytest.raises(MedtransError, match="2D only"):
            scan_orders(shape, kind)
        return
    orders = scan_orders(shape, kind)
    assert len(orders) == (2 * len(shape) if kind == "cross" else 2)
    fmap = torch.randn(2, 3, *shape)
    flat = fmap.flatten(2)
    for order in orders:
        assert sorted(order.tolist()) == list(range(flat.shape[-1]))  # a permutation
        restored = flat[:, :, order][:, :, inverse_order(order)]
        assert torch.equal(restored.reshape(fmap.shape), fmap)


def test_cross_orders_are_rows_columns_and_their_reversals():
    grid = torch.arange(6).reshape(2, 3)  # 0 1 2 / 3 4 5
    rows, rows_rev, cols, cols_rev = (o.tolist() for o in scan_orders((2, 3)))
    assert rows == grid.reshape(-1).tolist() and rows_rev == rows[::-1]
    assert cols == grid.T.reshape(-1).tolist() == [0, 3, 1, 4, 2, 5] and cols_rev == cols[::-1]


def test_spiral_walks_the_border_inwards():
    # 0  1  2  3
    # 4  5  6  7
    # 8  9 10 11
    assert scan_orders((3, 4), "spiral")[0].tolist() == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
