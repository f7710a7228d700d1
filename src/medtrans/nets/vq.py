"""VQ-VAE building blocks (van den Oord et al. 2017), 2D and 3D: an EMA codebook and a conv autoencoder.

The codebook is learned by exponential moving averages of the encoder outputs assigned to each code
(Laplace-smoothed cluster sizes), not by gradients, as in MONAI's ``EMAQuantizer``; the encoder gets
the straight-through gradient and the commitment term. Dead codes (unused since the last check) are
re-initialised from random encoder outputs of the current batch, the usual fix for codebook collapse.
The codebook lives in buffers, so it is saved with the weights and exact resume keeps it.

Everything here is hand-written rather than MONAI's ``VQVAE``: MONAI's quantiser has no dead-code
restart and its networks fix the residual layout; these nets are small and norm-free of running
statistics (GroupNorm), so train and eval mode compute the same thing (a frozen stage 1 stays frozen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.nets import blocks


def channels_last_flat(z: Tensor) -> Tensor:
    """(B, D, *grid) → (B·N, D): one row per grid cell."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


class EMAQuantizer(nn.Module):
    """Nearest-code quantisation with an EMA codebook and dead-code restarts.

    Args:
        num_embeddings: K, the number of codes.
        embedding_dim: D, the size of a code vector.
        decay: EMA decay of the cluster statistics (MONAI: 0.99 in ``EMAQuantizer``, 0.5 in ``VQVAE``).
        epsilon: Laplace smoothing of the cluster sizes (keeps empty clusters from dividing by 0).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, decay: float = 0.99,
                 epsilon: float = 1e-5) -> None:
        super().__init__()
        if num_embeddings < 2 or embedding_dim < 1:
            raise MedtransError(None, f"codebook of {num_embeddings} codes of size {embedding_dim}",
                                "use at least 2 codes of size ≥ 1")
        if not 0 < decay < 1:
            raise MedtransError(None, f"codebook decay {decay} is outside (0, 1)", "use e.g. 0.99")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.decay, self.epsilon = float(decay), float(epsilon)
        codes = torch.randn(num_embeddings, embedding_dim) / math.sqrt(embedding_dim)
        self.register_buffer("codebook", codes)
        self.register_buffer("cluster_size", torch.ones(num_embeddings))
        self.register_buffer("code_sum", codes.clone())
        #: assignments per code since the last dead-code check
        self.register_buffer("recent_use", torch.zeros(num_embeddings))

    def indices(self, z: Tensor) -> Tensor:
        """Nearest code of each cell of ``z`` (B, D, *grid) → (B, *grid) int64."""
        with torch.autocast(z.device.type, enabled=False):
            flat = channels_last_flat(z.float())
            distance = (flat.square().sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                        + self.codebook.square().sum(1)[None])
            return distance.argmin(1).reshape(z.shape[0], *z.shape[2:])

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors of ``indices`` (B, *grid) → (B, D, *grid)."""
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def forward(self, z: Tensor, update: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(straight-through quantised z, indices, commitment ‖z − sg[q]‖²); ``update`` moves the codebook."""
        idx = self.indices(z)
        if update:
            self._ema_update(z.detach().float(), idx)
        q = self.lookup(idx)
        commitment = F.mse_loss(z.float(), q)
        return z + (q - z).detach(), idx, commitment

    @torch.no_grad()
    def _ema_update(self, z: Tensor, idx: Tensor) -> None:
        flat = channels_last_flat(z)
        onehot = F.one_hot(idx.reshape(-1), self.num_embeddings).float()
        counts = onehot.sum(0)
        self.recent_use += counts
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.num_embeddings * self.epsilon) * total
        self.codebook.copy_(self.code_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: Tensor) -> int:
        """Codes unused since the last call get random encoder outputs of ``z``; returns their number."""
        dead = (self.recent_use == 0).nonzero().flatten()
        self.recent_use.zero_()
        if dead.numel() == 0:
            return 0
        flat = channels_last_flat(z.detach().float())
        picks = flat[torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)]
        self.codebook[dead] = picks
        self.code_sum[dead] = picks
        self.cluster_size[dead] = 1.0
        return int(dead.numel())


def code_statistics(indices: Tensor, num_embeddings: int) -> tuple[Tensor, Tensor]:
    """(fraction of the K codes used, perplexity exp(−Σ p log p)) of a batch of indices."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_embeddings).float()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
    return (counts > 0).float().mean(), perplexity


class Residual(nn.Module):
    """x + conv1(act(norm(conv3(x)))): the residual block of the VQ autoencoder and vqar's source encoder."""

    def __init__(self, spatial_dims: int, channels: int, norm: str = "group") -> None:
        super().__init__()
        self.body = nn.Sequential(
            blocks.ConvNormAct(spatial_dims, channels, channels, norm_name=norm, act="silu"),
            blocks.conv(spatial_dims, channels, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class VQAutoencoder(nn.Module):
    """Conv encoder → EMA quantiser → conv decoder; ``downsample`` (a power of 2) per spatial axis.

    Args:
        channels: image channels (1: the target modality).
        widths: conv widths from full resolution down, one per stage (the last one repeats).
        downsample: token grid stride (4 or 8 in practice: 256² → 64² or 32² tokens).
        num_embeddings, embedding_dim, decay, epsilon: the codebook (see :class:`EMAQuantizer`).
        residual_blocks: residual blocks at the token resolution, in the encoder and in the decoder.
    """

    def __init__(self, spatial_dims: int, channels: int = 1, widths: Sequence[int] = (32, 64),
                 downsample: int = 4, num_embeddings: int = 256, embedding_dim: int = 64,
                 decay: float = 0.99, epsilon: float = 1e-5, residual_blocks: int = 2) -> None:
        super().__init__()
        blocks.check_spatial_dims(spatial_dims)
        levels = int(round(math.log2(downsample))) if downsample >= 1 else -1
        if levels < 0 or 2**levels != downsample:
            raise MedtransError(None, f"downsample {downsample} is not a power of 2", "use 4 or 8")
        widths = list(widths)
        if not widths:
            raise MedtransError(None, "autoencoder widths are empty", "give e.g. [32, 64]")
        self.spatial_dims, self.downsample = spatial_dims, int(downsample)
        width_at = [widths[min(i, len(widths) - 1)] for i in range(levels + 1)]
        sd = spatial_dims
        enc: list[nn.Module] = [blocks.conv(sd, channels, width_at[0])]
        for i in range(levels):
            enc += [nn.SiLU(), blocks.conv(sd, width_at[i], width_at[i + 1], 4, stride=2, padding=1)]
        enc += [Residual(sd, width_at[-1]) for _ in range(residual_blocks)]
        enc += [nn.SiLU(), blocks.conv(sd, width_at[-1], embedding_dim, kernel_size=1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = EMAQuantizer(num_embeddings, embedding_dim, decay, epsilon)
        dec: list[nn.Module] = [blocks.conv(sd, embedding_dim, width_at[-1])]
        dec += [Residual(sd, width_at[-1]) for _ in range(residual_blocks)]
        for i in reversed(range(levels)):
            dec += [nn.SiLU(), blocks.conv_transpose(sd, width_at[i + 1], width_at[i], 4, 2, padding=1)]
        dec += [nn.SiLU(), blocks.conv(sd, width_at[0], channels)]
        self.decoder = nn.Sequential(*dec)

    @property
    def num_embeddings(self) -> int:
        return self.quantizer.num_embeddings

    def encode(self, x: Tensor) -> Tensor:
        """Continuous latents (B, D, *grid) of ``x``, whose size must be a multiple of ``downsample``."""
        if any(s % self.downsample for s in x.shape[2:]):
            raise MedtransError(None, f"image of size {tuple(x.shape[2:])} is not a multiple of the "
                                f"token stride {self.downsample}", "pad it (blocks.pad_to_multiple)")
        return self.encoder(x)

    def tokens(self, x: Tensor) -> Tensor:
        """Code indices (B, *grid) of ``x``."""
        return self.quantizer.indices(self.encode(x))

    def decode_tokens(self, indices: Tensor) -> Tensor:
        return self.decoder(self.quantizer.lookup(indices).to(self.decoder[0].weight.dtype))

    def forward(self, x: Tensor, update: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(reconstruction, indices, commitment, latents) of ``x``; ``update`` moves the EMA codebook."""
        z = self.encode(x)
        q, idx, commitment = self.quantizer(z, update=update)
        return self.decoder(q), idx, commitment, z
