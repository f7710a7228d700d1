"""Missing source modalities: train with random source dropout, predict from whatever subset is present.

Multi-contrast MR rarely has every contrast for every subject. A run with ``data.source_dropout`` > 0
sees, for each source, its channels (zeroed when the source is absent) plus one availability channel
(1 present, 0 absent). The channels keep the grouping of ``engine.inferers.context_stack``: the
sources' stacks first, then one availability "modality" per source, stacked like the images in 2.5D,
so training batches and inference volumes have the same layout.

During training each source of each sample is dropped with probability ``p`` (torch's global
generator, whose state the checkpoint keeps), never all of them: one random source is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def input_channels(n_sources: int, stack: int, dropout: float) -> int:
    """Network input channels: each source's stack, plus its availability stack when dropout is on."""
    return n_sources * stack * (2 if dropout > 0 else 1)


def drop_sources(source: Tensor, n_sources: int, dropout: float) -> Tensor:
    """(B, n·stack, *spatial) → (B, 2·n·stack, *spatial): dropped sources zeroed, availability appended."""
    batch = source.shape[0]
    stack = source.shape[1] // n_sources
    present = torch.rand(batch, n_sources, device=source.device) >= dropout
    keep = torch.randint(0, n_sources, (batch,), device=source.device)
    present[torch.arange(batch, device=source.device), keep] = True  # never drop every source
    per_channel = present.to(source.dtype).repeat_interleave(stack, dim=1)
    view = (batch, n_sources * stack, *([1] * (source.dim() - 2)))
    available = per_channel.reshape(view).expand_as(source)
    return torch.cat([source * available, available.contiguous()], dim=1)


def with_availability(array: np.ndarray, present: Sequence[bool]) -> np.ndarray:
    """A model-space volume (n, X, Y, Z) → (2n, X, Y, Z): absent sources zeroed, availability appended."""
    flags = np.asarray(present, np.float32).reshape(-1, 1, 1, 1)
    images = np.asarray(array, np.float32) * flags
    return np.concatenate([images, np.broadcast_to(flags, images.shape)]).astype(np.float32)
