"""Layer factories shared by every backbone, chosen by ``spatial_dims`` so one class serves 2D and 3D.

Later backbones (transformer, Mamba) and the diffusion-family methods build on these factories, so the
names and options (norm ``instance|batch|group|none``, activations) mean the same everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.errors import MedtransError

NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu")


def check_spatial_dims(spatial_dims: int) -> int:
    """Backbones exist for 2D slices and 3D patches only."""
    if spatial_dims not in (2, 3):
        raise MedtransError(None, f"spatial_dims must be 2 or 3, got {spatial_dims!r}", "use 2 or 3")
    return spatial_dims


def _choice(kind: str, value: str | None, allowed: tuple[str, ...]) -> str:
    value = "none" if value is None else str(value).lower()
    if value not in allowed:
        raise MedtransError(None, f"unknown {kind} {value!r}", f"choose one of: {', '.join(allowed)}")
    return value


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int | None = None,
    bias: bool = True,
    padding_mode: str = "zeros",
    groups: int = 1,
) -> nn.Module:
    """A Conv2d/Conv3d; ``padding=None`` keeps the size for odd kernels at stride 1 ("same")."""
    cls = nn.Conv2d if check_spatial_dims(spatial_dims) == 2 else nn.Conv3d
    if padding is None:
        padding = kernel_size // 2
    return cls(in_channels, out_channels, kernel_size, stride, padding, bias=bias, padding_mode=padding_mode,
               groups=groups)


def conv_transpose(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    padding: int = 0,
    output_padding: int = 0,
    bias: bool = True,
) -> nn.Module:
    """A ConvTranspose2d/3d (learned upsampling)."""
    cls = nn.ConvTranspose2d if check_spatial_dims(spatial_dims) == 2 else nn.ConvTranspose3d
    return cls(in_channels, out_channels, kernel_size, stride, padding, output_padding, bias=bias)


UPSAMPLES = ("transpose", "resize")


def upsampler(
    spatial_dims: int, in_channels: int, out_channels: int, mode: str = "transpose", kernel_size: int = 2,
    bias: bool = True, factor: int = 2,
) -> nn.Module:
    """A learned ``factor``× upsampling: a transposed conv of stride ``factor``, or nearest resize then a
    3×3 conv (kernel 3 of a transposed conv means padding 1, output padding 1: CycleGAN's 2× layer).

    ``transpose`` (kernel 2, or 3 with padding 1 and output padding 1) gives each output pixel of a
    2×2 cell its own kernel taps, so an untrained or briefly trained net paints a 2-pixel checkerboard
    (Odena, Dumoulin & Olah, Distill 2016). ``resize`` repeats each voxel (no power at the 2-pixel
    period) and the shift-invariant 3×3 conv after it cannot create any. The transposed conv is
    returned bare so checkpoints of nets built before this option keep their keys.
    """
    mode = _choice("upsample", mode, UPSAMPLES)
    if mode == "transpose":
        padding, extra = (1, 1) if kernel_size == 3 and factor == 2 else (0, 0)
        kernel_size = kernel_size if padding else factor
        return conv_transpose(spatial_dims, in_channels, out_channels, kernel_size, factor, padding, extra,
                              bias)
    return nn.Sequential(nn.Upsample(scale_factor=factor, mode="nearest"),
                         conv(spatial_dims, in_channels, out_channels, 3, bias=bias))


def has_norm(name: str | None) -> bool:
    """Whether ``name`` is a real norm (then the conv before it needs no bias: the norm shifts)."""
    return _choice("norm", name, NORMS) != "none"


def norm(name: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """Normalisation layer by name.

    ``instance`` normalises each channel of each image over space (affine, no running statistics: the
    same in training and inference, which suits batch-size-1 translation); ``batch`` is BatchNorm;
    ``group`` uses the largest divisor of ``channels`` not above 8 as the number of groups.
    """
    name = _choice("norm", name, NORMS)
    check_spatial_dims(spatial_dims)
    if name == "instance":
        return InstanceNorm(channels)
    if name == "batch":
        return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm3d(channels)
    if name == "group":
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class InstanceNorm(nn.Module):
    """Instance normalisation (affine) that keeps channels_last layouts, for 2D and 3D.

    ``nn.InstanceNormNd`` reshapes to (1, B·C, …), which copies a channels_last tensor to contiguous
    and back in every layer (the U-Net step then gains 1.6× instead of 2.2× from channels_last + bf16).
    Batch norm of each sample alone computes the same statistics on the tensor's own layout.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if x[0, 0].numel() < 2:
            raise MedtransError(
                None,
                f"instance norm got a {tuple(x.shape[2:])} feature map (one voxel has no spread)",
                "use larger patches or slices, or a smaller depth / fewer downsamplings",
            )
        parts = [
            F.batch_norm(sample, None, None, self.weight, self.bias, True, 0.0, self.eps)
            for sample in x.split(1)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def activation(name: str) -> nn.Module:
    """Activation by name; ``leaky_relu`` uses slope 0.2 as in pix2pix and CycleGAN."""
    name = _choice("activation", name, ACTIVATIONS)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU(inplace=True)
    return nn.ELU(inplace=True)


def out_activation(name: str | None) -> nn.Module:
    """The output head's activation: linear (``None``) by default, or ``tanh`` for a [-1, 1] range."""
    name = _choice("out_activation", name, ("none", "tanh"))
    return nn.Tanh() if name == "tanh" else nn.Identity()


class ConvNormAct(nn.Sequential):
    """conv → norm → activation; the conv has no bias when a norm follows (the norm's shift replaces it)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm_name: str | None = "instance",
        act: str = "relu",
        padding: int | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(
            conv(
                spatial_dims,
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                bias=not has_norm(norm_name),
                padding_mode=padding_mode,
            ),
            norm(norm_name, spatial_dims, out_channels),
            activation(act),
        )


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "replicate") -> tuple[Tensor, tuple[int, ...]]:
    """Pad the spatial axes at their far end up to a multiple of ``multiple``; returns the original size.

    Encoder-decoder nets halve the size ``depth`` times, so any input size works when padded here and
    cropped back with ``crop_to`` after the decoder.
    """
    size = tuple(x.shape[2:])
    extra = [(-s) % multiple for s in size]
    if not any(extra):
        return x, size
    pads: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pads += [0, e]
    return F.pad(x, pads, mode=mode), size


def crop_to(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Undo ``pad_to_multiple``: keep the first ``size`` voxels of each spatial axis."""
    if tuple(x.shape[2:]) == size:
        return x
    return x[(slice(None), slice(None), *(slice(0, s) for s in size))]


# ----------------------------------------------------------------------------------- time conditioning
class TimeEmbedding(nn.Module):
    """Diffusion / flow time t ∈ [0, 1], shape (B,), → a (B, dim) embedding.

    Sinusoidal features of ``scale · t`` (scale 1000: sinusoids designed for integer steps lose
    resolution on [0, 1], so t is scaled once, here, and nowhere else) through Linear-SiLU-Linear.
    """

    def __init__(self, dim: int, frequencies: int | None = None, scale: float = 1000.0) -> None:
        super().__init__()
        self.frequencies = frequencies or max(8, dim // 2)
        self.scale = float(scale)
        self.mlp = nn.Sequential(nn.Linear(2 * self.frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        t = t.reshape(-1).float() * self.scale
        steps = torch.arange(self.frequencies, device=t.device) / self.frequencies
        half = torch.exp(-math.log(10000.0) * steps)
        angles = t[:, None] * half[None, :]
        features = torch.cat([angles.sin(), angles.cos()], dim=1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class FiLM(nn.Module):
    """Per-channel scale and shift from an embedding: ``x · (1 + scale) + shift`` (AdaGN after a norm)."""

    def __init__(self, embedding_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(embedding_dim, 2 * channels))

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        scale, shift = self.proj(embedding).to(x.dtype).chunk(2, dim=1)
        view = (x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
        return x * (1 + scale.reshape(view)) + shift.reshape(view)


def modulated(block: ConvNormAct, x: Tensor, film: FiLM | None, embedding: Tensor | None) -> Tensor:
    """conv → norm → FiLM → activation; the plain ``block(x)`` when there is no embedding (no cost)."""
    if film is None or embedding is None:
        return block(x)
    conv_layer, norm_layer, act_layer = block
    return act_layer(film(norm_layer(conv_layer(x)), embedding))


class TimeConditioned(nn.Module):
    """Mixin of the backbone contract ``net(x, t=None, emb=None)``.

    A backbone built with ``time_dim`` > 0 owns a :class:`TimeEmbedding`; ``embedding(t, emb, batch)``
    gives the (B, time_dim) vector its FiLM layers use: the embedding of ``t`` (shape (B,) or a scalar,
    in [0, 1]) plus ``emb``, an extra vector a method may add (a latent code through a mapping network,
    a cVAE's z). With both ``None`` it returns ``None`` and every FiLM is skipped, so regression and GAN
    runs pay nothing. A backbone built without time conditioning refuses a ``t``.
    """

    time_dim: int = 0
    time: TimeEmbedding | None

    def init_time(self, time_dim: int) -> None:
        self.time_dim = int(time_dim)
        self.time = TimeEmbedding(self.time_dim) if self.time_dim > 0 else None

    def films(self, channels: int) -> FiLM | None:
        """A FiLM layer for a block of ``channels`` (None without time conditioning)."""
        return FiLM(self.time_dim, channels) if self.time_dim > 0 else None

    def embedding(self, t: Tensor | float | None, emb: Tensor | None, batch: int) -> Tensor | None:
        if t is None and emb is None:
            return None
        if self.time is None:
            raise MedtransError(None, f"{type(self).__name__} got a time step but was built without time "
                                "conditioning", "build it with time_dim > 0 (the diffusion and flow methods "
                                "do this themselves)")
        out = 0
        if t is not None:
            t = torch.as_tensor(t, device=self.time.mlp[0].weight.device, dtype=torch.float32)
            out = self.time(t.expand(batch) if t.dim() == 0 else t)
        if emb is not None:
            out = out + emb
        return out
