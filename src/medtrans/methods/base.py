"""What every translation method provides, so one trainer and one predictor run them all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


class Method(nn.Module, ABC):
    """A translation method: its networks, its objective per optimiser group, and how it translates.

    Batches are dicts of tensors: ``source`` (B, C_src, *spatial), ``target`` (B, 1, *spatial) and,
    when known, ``mask`` (B, 1, *spatial). For unpaired methods source and target come from different
    subjects. Intensities are in the plan's normalised space (roughly [-1, 1]).

    The trainer, for each step and each group in ``groups`` (in order): freezes the other groups'
    parameters, calls ``losses(batch, group)`` under autocast, backpropagates the sum of the returned
    terms (already weighted by the method), clips and steps that group's optimiser. A method may cache
    tensors between the groups of one step (e.g. the generator output reused by the discriminator).
    """

    paired: ClassVar[bool] = True
    groups: ClassVar[tuple[str, ...]] = ("g",)

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels

    @abstractmethod
    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        """The parameters optimised by ``group`` (each parameter belongs to exactly one group)."""

    @abstractmethod
    def losses(self, batch: dict[str, Tensor], group: str) -> dict[str, Tensor]:
        """Named, weighted loss terms of ``group`` for this batch; the trainer minimises their sum."""

    @abstractmethod
    def translate(
        self, source: Tensor, steps: int | None = None, samples: int = 1
    ) -> tuple[Tensor, Tensor | None]:
        """Prediction (B, out_channels, *spatial) and, for stochastic methods, an uncertainty map."""

    def optimizer_settings(self, group: str) -> dict[str, Any]:
        """Per-group overrides of the optimiser settings (e.g. GAN betas); empty means the config's."""
        return {}

    @torch.no_grad()
    def example_input(self, batch_size: int, size: int) -> Tensor:
        """A source tensor of the right shape, for tracing, export and benchmarks."""
        return torch.zeros(batch_size, self.in_channels, *([size] * self.spatial_dims))
