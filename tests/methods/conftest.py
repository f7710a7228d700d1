"""A minimal stand-in for the trainer's step (the real one lives in medtrans.engine): one Adam per group,
other groups frozen, the sum of the method's terms minimised, groups in the method's order."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import torch
from torch import Tensor

from medtrans.methods.base import Method

TrainFn = Callable[..., list[dict[str, float]]]


def _train(
    method: Method,
    batches: Iterable[dict[str, Tensor]],
    lr: float = 1e-3,
    groups: tuple[str, ...] | None = None,
) -> list[dict[str, float]]:
    """Run one step per batch (of ``groups``, default all; ``step`` counts from 0 as in the trainer);
    returns the terms ``group/name`` per step."""
    groups = groups or method.groups
    optimizers = {
        g: torch.optim.Adam(method.group_parameters(g), lr=lr, **method.optimizer_settings(g)) for g in groups
    }
    history = []
    for step, batch in enumerate(batches):
        logged = {}
        for group in groups:
            others = [p for g in method.groups if g != group for p in method.group_parameters(g)]
            for p in others:
                p.requires_grad_(False)
            terms = method.losses(batch, group, step)
            optimizers[group].zero_grad(set_to_none=True)
            torch.stack(list(terms.values())).sum().backward()
            optimizers[group].step()
            for p in others:
                p.requires_grad_(True)
            logged.update({f"{group}/{k}": float(v.detach()) for k, v in terms.items()})
        history.append(logged)
    return history


@pytest.fixture
def train() -> TrainFn:
    return _train


def _assert_groups_partition(method: Method) -> None:
    """Every parameter is in exactly one group."""
    seen: list[int] = [id(p) for g in method.groups for p in method.group_parameters(g)]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in method.parameters()}


@pytest.fixture
def assert_groups_partition() -> Callable[[Method], None]:
    return _assert_groups_partition
