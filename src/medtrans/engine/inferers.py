"""The one inference path: a method's translation over a whole model-space volume, with uncertainty.

Used by trainer validation and by ``medtrans predict`` alike (built once by ``build_inferer`` from the
plan and the run's settings), so a validation score and a prediction come from the same code:

- :class:`SliceInferer`: 2D slices along the plan's slice axis in batches; 2.5D stacks ``context``
  neighbours on each side as channels. In-plane sizes are replicate-padded to a multiple of 32.
- :class:`WindowInferer`: 3D windows of the patch size, blended with Gaussian weights
  (``monai.inferers.sliding_window_inference``, overlap 0.5, replicate padding).

Every call of the network returns the mean of its samples and their second moment E[x²]; both are
blended with the same weights, and var = E[x²] − E[x]² only at the end, so a std map has no seams at
window or batch borders. Flip TTA adds the flipped passes to the same moments (for a deterministic
method their spread is the uncertainty proxy).

Noise: each slice (or window, by its corner) gets its own generator seeded from (seed, index), so a
prediction with ``seed`` is identical whatever the batch size.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medtrans.methods.schedules import Noise

#: in-plane sizes are padded to a multiple of this, so every U-Net depth up to 5 fits
PAD_MULTIPLE = 32

#: (input batch, its noise) → (mean, second moment), both (B, 1, *spatial) float32
Moments = Callable[[Tensor, Noise], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``steps`` (None: the method's default), ``samples`` per voxel, ``seed``, flip TTA."""

    steps: int | None = None
    samples: int = 1
    seed: int = 0
    tta: bool = False


def item_seed(seed: int, *index: int) -> int:
    """A generator seed for one slice or window, from the run seed and its position (stable)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, *(int(i) for i in index)]).generate_state(1)[0])


def method_moments(method: torch.nn.Module, sampling: Sampling, device: torch.device, amp: bool = False,
                   memory_format: torch.memory_format | None = None,
                   flip_axes: Sequence[int] = ()) -> Moments:
    """The method as a ``Moments`` function: ``translate`` under autocast, flips averaged when TTA."""
    combos = [()]
    if sampling.tta:
        combos = [c for r in range(len(flip_axes) + 1) for c in itertools.combinations(flip_axes, r)]

    def run(x: Tensor, noise: Noise) -> tuple[Tensor, Tensor]:
        x = x.to(device)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        mean_total = second_total = None
        for dims in combos:
            xin = torch.flip(x, dims) if dims else x
            with torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext():
                mean, std = method.translate(xin, sampling.steps, sampling.samples, noise)
            mean = mean.float()
            second = mean.square() if std is None else mean.square() + std.float().square()
            if dims:
                mean, second = torch.flip(mean, dims), torch.flip(second, dims)
            mean_total = mean if mean_total is None else mean_total + mean
            second_total = second if second_total is None else second_total + second
        return mean_total / len(combos), second_total / len(combos)

    return run


def spread(mean: Tensor, second: Tensor) -> Tensor:
    """Std from blended moments (clamped: rounding can make E[x²] − E[x]² slightly negative)."""
    return (second - mean.square()).clamp(min=0).sqrt()


def pad_in_plane(x: Tensor, multiple: int) -> tuple[Tensor, list[int]]:
    """Replicate-pad the last two axes of ``x`` up to a multiple; returns the original sizes."""
    sizes = list(x.shape[-2:])
    pad: list[int] = []
    for size in reversed(sizes):
        pad += [0, (-size) % multiple]
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x, sizes


def context_stack(array: Tensor, index: Tensor, context: int) -> Tensor:
    """2.5D inputs for slices ``index`` of ``array`` (C, S, H, W): (len(index), C*(2*context+1), H, W).

    Channels are grouped per source modality (modality 0's stack, then modality 1's …), slices
    ordered from ``s - context`` to ``s + context``; indices past either end repeat the end slice.
    ``context=0`` gives plain 2D slices (B, C, H, W).
    """
    offsets = torch.arange(-context, context + 1)
    neighbours = (index[:, None] + offsets[None, :]).clamp(0, array.shape[1] - 1)  # (B, context)
    stacked = array[:, neighbours]  # (C, B, context, H, W)
    return stacked.permute(1, 0, 2, 3, 4).reshape(len(index), -1, *array.shape[2:])


class Inferer(ABC):
    """Model-space volume (C, X, Y, Z) → (mean (X, Y, Z), std (X, Y, Z) or None)."""

    #: tensor axes a TTA flip may use (in-plane axes of the network input)
    flip_axes: tuple[int, ...] = ()

    @abstractmethod
    def __call__(self, moments: Moments, array: Tensor, seed: int, with_std: bool,
                 progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor | None]:
        """``progress(n)`` is called with the number of slices just finished."""


@dataclass
class SliceInferer(Inferer):
    """Slice-by-slice (2D / 2.5D) inference; ``indices`` restricts it to some slices (validation)."""

    slice_axis: int
    batch_size: int
    context: int = 0
    flip_axes: tuple[int, ...] = (2, 3)

    def __call__(self, moments: Moments, array: Tensor, seed: int, with_std: bool,
                 progress: Callable[[int], None] | None = None,
                 indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor | None]:
        moved = torch.movedim(array, 1 + self.slice_axis, 1)  # (C, S, H, W)
        padded, (height, width) = pad_in_plane(moved, PAD_MULTIPLE)
        chosen = torch.arange(padded.shape[1]) if indices is None else torch.as_tensor(list(indices))
        mean_out = torch.zeros(padded.shape[1], height, width, dtype=torch.float32)
        std_out = torch.zeros_like(mean_out) if with_std else None
        for start in range(0, len(chosen), self.batch_size):
            index = chosen[start:start + self.batch_size]
            noise = Noise.seeded([item_seed(seed, int(i)) for i in index])
            mean, second = moments(context_stack(padded, index, self.context), noise)
            mean, second = mean[:, 0, :height, :width].cpu(), second[:, 0, :height, :width].cpu()
            mean_out[index] = mean
            if std_out is not None:
                std_out[index] = spread(mean, second)
            if progress is not None:
                progress(len(index))
        mean_out = torch.movedim(mean_out, 0, self.slice_axis)
        return mean_out, (None if std_out is None else torch.movedim(std_out, 0, self.slice_axis))


@dataclass
class WindowInferer(Inferer):
    """3D sliding-window inference with Gaussian blending of the mean and the second moment."""

    patch_size: Sequence[int]
    batch_size: int
    slice_axis: int = 2
    overlap: float = 0.5

    @property
    def flip_axes(self) -> tuple[int, ...]:  # the two in-plane axes of a (B, C, X, Y, Z) window
        return tuple(2 + ax for ax in range(3) if ax != self.slice_axis)

    def __call__(self, moments: Moments, array: Tensor, seed: int, with_std: bool,
                 progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor | None]:
        from monai.inferers import sliding_window_inference

        def window(x: Tensor, coords: Sequence[Sequence[slice]]) -> tuple[Tensor, Tensor]:
            # MONAI passes each window's slices (batch axis first); the corner seeds its noise
            seeds = [item_seed(seed, *(s.start or 0 for s in c[2:])) for c in coords]
            mean, second = moments(x, Noise.seeded(seeds))
            return mean.float(), second.float()

        mean, second = sliding_window_inference(
            array[None].float(), roi_size=list(self.patch_size), sw_batch_size=self.batch_size,
            predictor=window, overlap=self.overlap, mode="gaussian", padding_mode="replicate",
            device=torch.device("cpu"), with_coord=True,
        )
        if progress is not None:
            progress(array.shape[1 + self.slice_axis])
        mean, second = mean[0, 0].float(), second[0, 0].float()
        return mean, (spread(mean, second) if with_std else None)


def build_inferer(dims: str, slice_axis: int, batch_size: int, context: int = 0,
                  patch_size: Sequence[int] | None = None, overlap: float = 0.5) -> Inferer:
    """The inferer for a run trained on ``dims`` (``2d``, ``2.5d`` or ``3d``)."""
    if dims == "3d":
        if patch_size is None:
            raise ValueError("3D inference needs a patch size")
        return WindowInferer(list(patch_size), batch_size, slice_axis=slice_axis, overlap=overlap)
    return SliceInferer(slice_axis, batch_size, context=context if dims == "2.5d" else 0)
