"""What every translation method provides, so one trainer and one predictor run them all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class ExportSpec:
    """What ``medtrans export`` writes to ONNX for a method (see ``Method.export_network``).

    ``network(*inputs.values())`` is traced; ``inputs`` name the ONNX inputs in call order (their
    batch and spatial axes become dynamic); ``schedule`` is whatever a multi-step method's sampling loop
    needs around the network (step count, time grid, noise schedule …), written as JSON beside the
    .onnx; it is empty for one-pass methods, whose network maps the source to the prediction.
    """

    network: nn.Module
    inputs: dict[str, Tensor]
    schedule: dict[str, Any] = field(default_factory=dict)


class _Translation(nn.Module):
    """``source → translate(source)[0]``: the whole translation of a one-pass method as one module."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, source: Tensor) -> Tensor:
        return self.method.translate(source)[0]


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

    def export_network(self, source: Tensor) -> ExportSpec:
        """The network ``medtrans export`` writes, given an example ``source`` batch.

        One-pass methods export their whole translation (the default). A multi-step method returns its
        step network (e.g. ``net(x_t ‖ source, t)`` with example inputs of the right shapes) and the
        schedule its sampling loop needs.
        """
        return ExportSpec(network=_Translation(self), inputs={"source": source})
