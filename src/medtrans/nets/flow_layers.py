"""Invertible layers of a conditional multi-scale normalizing flow (Glow, SRFlow, cINN), 2D and 3D.

Every layer maps ``forward(x, cond) -> (y, logdet)`` with ``logdet`` (B,) = log|det ∂y/∂x| per item,
and ``inverse(y, cond) -> x`` exactly; ``cond`` is the source's features at the layer's scale (ignored
by the layers that need none). Hand-written because no kept library has conditional flows on images
for both 2D and 3D (FrEIA and nflows are not dependencies; MONAI has no flows).

The multi-scale structure is itself one shape-preserving bijection (``FlowLevel``): squeeze, K steps,
a conditional Gaussian prior that *whitens* the split-off half (so every latent is N(0, I) under the
model), the inner level on the kept half, unsqueeze. The whole flow thus maps the target image to a
standard-normal tensor of the same shape, and log p(x | y) = log N(f(x); 0, I) + logdet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medtrans.nets.blocks import check_spatial_dims, conv

Cond = Tensor | None

#: bound of a coupling's shift, in the units of its ActNorm-standardised input
SHIFT_BOUND = 3.0


def soft_clamp(raw: Tensor, clamp: float) -> Tensor:
    """clamp · tanh(raw / clamp): ≈ raw near 0, bounded by ±clamp (an unbounded log-scale blows up)."""
    return clamp * torch.tanh(raw / clamp)


def per_item(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def _spatial_numel(x: Tensor) -> int:
    return x[0, 0].numel()


def _zero_conv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A 3×3 conv starting at zero: every coupling starts near the identity, every prior at N(0, I)."""
    layer = conv(spatial_dims, in_channels, out_channels, 3)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _with(x: Tensor, cond: Cond) -> Tensor:
    return x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)


class FlowLayer(nn.Module):
    """The contract: ``forward(x, cond) -> (y, logdet (B,))`` and its exact ``inverse(y, cond) -> x``."""

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: Tensor, cond: Cond = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class Squeeze(FlowLayer):
    """2× space → 2**spatial_dims × channels (space-to-depth); a permutation, so logdet = 0."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        b, c, *size = x.shape
        d = self.spatial_dims
        split = [n for s in size for n in (s // 2, 2)]
        order = (0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d)))  # factors first
        x = x.reshape(b, c, *split).permute(order)
        return x.reshape(b, c * 2**d, *(s // 2 for s in size)), x.new_zeros(b)

    def inverse(self, y: Tensor, cond: Cond = None) -> Tensor:
        b, c, *size = y.shape
        d = self.spatial_dims
        y = y.reshape(b, c // 2**d, *([2] * d), *size)
        y = y.permute(0, 1, *(n for i in range(d) for n in (2 + d + i, 2 + i)))
        return y.reshape(b, c // 2**d, *(s * 2 for s in size))


class ActNorm(FlowLayer):
    """Per-channel affine y = (x + loc) · exp(log_scale), initialised from the first training batch to
    zero mean and unit variance per channel (Glow). ``initialized`` is a persistent buffer, so a resumed
    or loaded model keeps its init and never re-initialises on the next batch."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        shape = (1, channels, *([1] * check_spatial_dims(spatial_dims)))
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        # bool, not float: the trainer's EMA copies non-float buffers instead of averaging them
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        axes = [0, *range(2, x.dim())]
        self.loc.copy_(-x.mean(axes, keepdim=True))
        self.log_scale.copy_(-torch.log(x.std(axes, keepdim=True, unbiased=False) + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.loc) * self.log_scale.exp()
        return y, (self.log_scale.sum() * _spatial_numel(x)).expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Cond = None) -> Tensor:
        return y * (-self.log_scale).exp() - self.loc


class InvConv1x1(FlowLayer):
    """Invertible 1×1 convolution, LU-parameterised (Glow): W = P · L · (U + diag(sign · exp(log_s))).

    log|det W| = Σ log_s costs nothing and the diagonal never crosses zero; starting from a random
    rotation keeps W well conditioned. The inverse is taken in float64 (W's inverse conditioning is a
    known pitfall) and cast back.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]
        perm, lower, upper = torch.linalg.lu(rotation)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", perm.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(diag.abs().log().float())

    def weight(self) -> Tensor:
        eye = torch.eye(self.lower.shape[0], device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_s.exp())
        return self.perm @ lower @ upper

    @staticmethod
    def _mix(w: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", w.to(x.dtype), x)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        return self._mix(self.weight(), x), (self.log_s.sum() * _spatial_numel(x)).expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Cond = None) -> Tensor:
        return self._mix(torch.linalg.inv(self.weight().double()), y)


class AffineCoupling(FlowLayer):
    """The second half moves as (x_b + t) · exp(s), with (s, t) from a small CNN on the first half **and
    the source features**, and both bounded so that the *inverse* cannot blow up when sampling.

    s = clamp · sigmoid(raw − 2) ∈ (0, clamp): the forward only expands (whitening a narrow conditional
    density needs expansion; ActNorm and the 1×1 conv rescale globally), so the inverse
    x_b = y_b · exp(−s) − t only contracts, and t = shift_bound · tanh(raw_t / shift_bound) adds at most
    ``shift_bound``. A two-sided log-scale (±clamp) lets each inverse coupling multiply by e^clamp where
    its CNN sees inputs unlike training (a sampled ε): over L × K couplings the gains compound (e^48 at
    clamp 2, L = 3, K = 8), which is what made samples explode. The −2 offset starts s at
    clamp · 0.12, near the identity, with a useful gradient (Glow's sigmoid(raw + 2), mirrored).
    """

    def __init__(self, spatial_dims: int, channels: int, cond_channels: int = 0, hidden: int = 64,
                 clamp: float = 2.0, shift_bound: float = SHIFT_BOUND) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        self.keep = channels // 2
        self.clamp = float(clamp)
        self.shift_bound = float(shift_bound)
        self.net = nn.Sequential(
            conv(spatial_dims, self.keep + cond_channels, hidden, 3), nn.SiLU(),
            conv(spatial_dims, hidden, hidden, 1), nn.SiLU(),
            _zero_conv(spatial_dims, hidden, 2 * (channels - self.keep)),
        )

    def _scale_shift(self, xa: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(_with(xa, cond)).chunk(2, dim=1)
        return self.clamp * torch.sigmoid(raw - 2.0), soft_clamp(shift, self.shift_bound)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        xa, xb = x[:, : self.keep], x[:, self.keep :]
        s, t = self._scale_shift(xa, cond)
        return torch.cat([xa, (xb + t) * s.exp()], dim=1), per_item(s)

    def inverse(self, y: Tensor, cond: Cond = None) -> Tensor:
        ya, yb = y[:, : self.keep], y[:, self.keep :]
        s, t = self._scale_shift(ya, cond)
        return torch.cat([ya, yb * (-s).exp() - t], dim=1)


class GaussianPrior(FlowLayer):
    """Conditional Gaussian prior on the channels after ``keep``: mean and log-std from a conv on the
    kept channels and the source features; forward whitens them to ε = (z − μ) / σ ~ N(0, I) (logdet
    −Σ log σ), inverse colours ε back. ``keep = 0`` is the top prior (source features only). At ε = 0
    the inverse returns μ: the temperature-0 sample."""

    def __init__(self, spatial_dims: int, channels: int, keep: int, cond_channels: int = 0,
                 clamp: float = 2.0) -> None:
        super().__init__()
        if keep + cond_channels < 1 or not 0 <= keep < channels:
            raise ValueError(f"a prior needs 0 <= keep < channels and something to condition on "
                             f"(keep {keep}, channels {channels}, cond {cond_channels})")
        self.keep = int(keep)
        self.clamp = float(clamp)
        self.params = _zero_conv(spatial_dims, keep + cond_channels, 2 * (channels - keep))

    def _mean_log_std(self, kept: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
        mean, raw = self.params(_with(kept, cond)).chunk(2, dim=1)
        return mean, soft_clamp(raw, self.clamp)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        kept, z = x[:, : self.keep], x[:, self.keep :]
        mean, log_std = self._mean_log_std(kept, cond)
        return torch.cat([kept, (z - mean) * (-log_std).exp()], dim=1), -per_item(log_std)

    def inverse(self, y: Tensor, cond: Cond = None) -> Tensor:
        kept, eps = y[:, : self.keep], y[:, self.keep :]
        mean, log_std = self._mean_log_std(kept, cond)
        return torch.cat([kept, eps * log_std.exp() + mean], dim=1)


class FlowSequence(FlowLayer):
    """Layers in order, all seeing the same ``cond``; logdets add up."""

    def __init__(self, layers: Sequence[FlowLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, logdet = layer(x, cond)
            total = total + logdet
        return x, total

    def inverse(self, y: Tensor, cond: Cond = None) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y, cond)
        return y


def flow_step(spatial_dims: int, channels: int, cond_channels: int = 0, hidden: int = 64,
              clamp: float = 2.0) -> FlowSequence:
    """One Glow step: ActNorm → invertible 1×1 conv → affine coupling."""
    return FlowSequence([ActNorm(spatial_dims, channels), InvConv1x1(channels),
                         AffineCoupling(spatial_dims, channels, cond_channels, hidden, clamp)])


class FlowLevel(FlowLayer):
    """squeeze → ``depth`` steps → prior → (inner level on the kept half) → unsqueeze; same shape out.

    ``cond`` is the list of source features, one per level from this one inwards (each at half the
    previous resolution, ``cond_channels`` here and twice as many per inner level); sizes must be
    divisible by 2**levels.
    """

    def __init__(self, spatial_dims: int, channels: int, cond_channels: int, levels: int, depth: int,
                 hidden: int = 64, clamp: float = 2.0) -> None:
        super().__init__()
        wide = channels * 2**spatial_dims
        self.squeeze = Squeeze(spatial_dims)
        self.steps = FlowSequence([flow_step(spatial_dims, wide, cond_channels, hidden, clamp)
                                   for _ in range(depth)])
        keep = wide // 2 if levels > 1 else 0
        self.prior = GaussianPrior(spatial_dims, wide, keep, cond_channels, clamp)
        self.inner = FlowLevel(spatial_dims, keep, 2 * cond_channels, levels - 1, depth, hidden, clamp) \
            if levels > 1 else None

    def forward(self, x: Tensor, cond: Sequence[Tensor]) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, _ = self.squeeze(x)
        x, logdet = self.steps(x, cond[0])
        x, prior_logdet = self.prior(x, cond[0])
        logdet = logdet + prior_logdet
        if self.inner is not None:
            kept, inner_logdet = self.inner(x[:, : self.prior.keep], cond[1:])
            x = torch.cat([kept, x[:, self.prior.keep :]], dim=1)
            logdet = logdet + inner_logdet
        return self.squeeze.inverse(x), logdet

    def inverse(self, y: Tensor, cond: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        y, _ = self.squeeze(y)
        if self.inner is not None:
            kept = self.inner.inverse(y[:, : self.prior.keep], cond[1:])
            y = torch.cat([kept, y[:, self.prior.keep :]], dim=1)
        y = self.prior.inverse(y, cond[0])
        return self.squeeze.inverse(self.steps.inverse(y, cond[0]))


class ConditionPyramid(nn.Module):
    """Source features at every level's scale: ``levels`` stride-2 conv blocks on the encoder output,
    doubling the width each time (level l gets ``channels · 2**l``), as the flow's own channels grow:
    a fixed width would be an information bottleneck at the coarse levels."""

    def __init__(self, spatial_dims: int, channels: int, levels: int) -> None:
        super().__init__()
        widths = [channels * 2**level for level in range(levels)]
        self.stages = nn.ModuleList(
            nn.Sequential(conv(spatial_dims, w_in, w_out, 3, stride=2, padding=1), nn.SiLU(),
                          conv(spatial_dims, w_out, w_out, 3), nn.SiLU())
            for w_in, w_out in zip([channels, *widths[:-1]], widths, strict=True)
        )

    def forward(self, features: Tensor) -> list[Tensor]:
        out = []
        for stage in self.stages:
            features = stage(features)
            out.append(features)
        return out


class ConditionalGlow(nn.Module):
    """The whole conditional flow: target (B, C, *spatial) ↔ ε of the same shape, given the source.

    ``encoder`` maps the source to ``cond_channels`` features at full resolution (a backbone in
    medtrans' methods); ``ConditionPyramid`` brings them to each level's scale (and width).
    ``forward(x, source)`` and ``inverse(eps, source)`` also accept the precomputed
    ``features(source)`` list, so a loss that needs both directions runs the encoder once.
    """

    def __init__(self, spatial_dims: int, channels: int, cond_channels: int, encoder: nn.Module,
                 levels: int = 3, depth: int = 8, hidden: int = 64, clamp: float = 2.0) -> None:
        super().__init__()
        self.levels = int(levels)
        self.encoder = encoder
        self.pyramid = ConditionPyramid(spatial_dims, cond_channels, self.levels)
        self.flow = FlowLevel(spatial_dims, channels, cond_channels, self.levels, depth, hidden, clamp)

    def features(self, source: Tensor) -> list[Tensor]:
        return self.pyramid(self.encoder(source))

    def _features(self, cond: Tensor | list[Tensor]) -> list[Tensor]:
        return cond if isinstance(cond, list) else self.features(cond)

    def forward(self, x: Tensor, cond: Tensor | list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.flow(x, self._features(cond))

    def inverse(self, eps: Tensor, cond: Tensor | list[Tensor]) -> Tensor:
        return self.flow.inverse(eps, self._features(cond))
