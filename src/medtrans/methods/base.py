"""What every translation method provides, so one trainer and one predictor run them all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.schedules import Noise


class Method(nn.Module, ABC):
    """A translation method: its networks, its objective per optimiser group, and how it translates.

    Batches are dicts of tensors: ``source`` (B, C_src, *spatial), ``target`` (B, 1, *spatial) and,
    when known, ``mask`` (B, 1, *spatial). For unpaired methods source and target come from different
    subjects. Intensities are in the plan's normalised space (roughly [-1, 1]).

    The trainer, for each step and each group in ``groups`` (in order): freezes the other groups'
    parameters, calls ``losses(batch, group, step)`` under autocast, backpropagates the sum of the
    returned terms (already weighted by the method), clips and steps that group's optimiser. A method
    may cache tensors between the groups of one step (e.g. the generator output reused by the
    discriminator).

    Translation: a method implements ``sample(source, steps, noise)``, one draw of the prediction;
    ``translate`` turns draws into the mean and the per-voxel std of ``samples`` draws. One-pass
    methods (``default_steps is None``) refuse a step count; ``stochastic`` methods draw their noise
    from ``noise`` (per-item generators, see ``schedules.Noise``) so predictions are reproducible.
    """

    paired: ClassVar[bool] = True
    groups: ClassVar[tuple[str, ...]] = ("g",)
    #: ``sample`` draws random numbers (several samples differ; their spread is an uncertainty map)
    stochastic: ClassVar[bool] = False
    #: sampling steps when none are asked for; None for one-pass methods, which refuse ``steps``
    default_steps: ClassVar[int | None] = None
    #: trains and translates on its own (False for a stage of a staged model, e.g. a VQ-VAE, which
    #: ``medtrans benchmark``'s ``entries: all`` leaves out)
    standalone: ClassVar[bool] = True

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels

    @classmethod
    def needs_pairs(cls, args: Mapping[str, Any]) -> bool:
        """Whether a run with these method ``args`` trains on paired data (checked against data.paired
        before any data is read); the class's ``paired`` unless the method has both variants."""
        return cls.paired

    @abstractmethod
    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        """The parameters optimised by ``group`` (each parameter belongs to exactly one group)."""

    @abstractmethod
    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        """Named, weighted loss terms of ``group`` for this batch at training ``step`` (0-based, for
        warm-ups and annealing); the trainer minimises their sum."""

    @abstractmethod
    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        """One draw of the prediction (B, out_channels, *spatial); ``steps`` is already resolved."""

    def resolve_steps(self, steps: int | None) -> int | None:
        """The step count to sample with: the default, or ``steps``; one-pass methods refuse one."""
        if self.default_steps is None:
            if steps is not None:
                raise MedtransError(None, f"{type(self).__name__} translates in one network pass and takes "
                                    "no step count", "drop --steps (or inference.steps)")
            return None
        steps = self.default_steps if steps is None else int(steps)
        if steps < 1:
            raise MedtransError(None, f"{steps} sampling steps asked for", "use at least 1")
        return steps

    def evaluations(self, steps: int | None) -> int:
        """Network evaluations per sample at ``steps`` (for cost tables); one pass by default."""
        return 1 if steps is None else int(steps)

    def translate(self, source: Tensor, steps: int | None = None, samples: int = 1,
                  noise: Noise | None = None) -> tuple[Tensor, Tensor | None]:
        """Mean of ``samples`` draws (B, out_channels, *spatial) and their per-voxel std (None for one
        draw, and for deterministic methods, which are run once whatever ``samples`` says)."""
        steps = self.resolve_steps(steps)
        if samples < 1:
            raise MedtransError(None, f"{samples} samples asked for", "use at least 1")
        if not self.stochastic or samples == 1:
            return self.sample(source, steps, noise), None
        # Welford's running mean / M2 in float32: memory of two images whatever ``samples`` is
        mean = m2 = None
        for k in range(samples):
            draw = self.sample(source, steps, noise).float()
            if mean is None:
                mean, m2 = draw, torch.zeros_like(draw)
                continue
            delta = draw - mean
            mean = mean + delta / (k + 1)
            m2 = m2 + delta * (draw - mean)
        return mean, (m2 / samples).sqrt()

    def optimizer_settings(self, group: str) -> dict[str, Any]:
        """Per-group overrides of the optimiser settings (e.g. GAN betas); empty means the config's."""
        return {}

    @torch.no_grad()
    def example_input(self, batch_size: int, size: int) -> Tensor:
        """A source tensor of the right shape, for tracing, export and benchmarks."""
        return torch.zeros(batch_size, self.in_channels, *([size] * self.spatial_dims))
