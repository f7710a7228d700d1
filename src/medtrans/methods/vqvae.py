"""Stage 1 of the autoregressive family: a VQ-VAE of the TARGET modality (van den Oord et al. 2017).

It learns to compress target images into a grid of K discrete codes and back. It does not translate:
stage 2 (``vqar``) learns a source-conditioned prior over its tokens and decodes them with this
run's frozen decoder. Its reconstruction PSNR is the ceiling of any vqar run built on it (the
quantisation floor of FAMILIES.md §4): validation scores the reconstruction of the validation
targets, and ``medtrans predict`` refuses a vqvae run.

Logged with the losses (each step, group ``g``): ``usage`` (fraction of the K codes used by the batch),
``perplexity`` (exp of the code entropy; K when every code is used equally) and ``psnr`` of the
batch's reconstruction. They are returned detached: the trainer backpropagates the sum of the terms,
and a detached term adds a constant to that sum (no gradient) while its logged value is the statistic
itself — a term multiplied by a weight of 0 would log 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.methods.base import Method
from medtrans.methods.losses import check_choice, reconstruction
from medtrans.methods.schedules import Noise
from medtrans.nets import blocks
from medtrans.nets.vq import VQAutoencoder, code_statistics
from medtrans.registry import METHODS

#: the plan's model space is [-1, 1]
DATA_RANGE = 2.0


def build_autoencoder(spatial_dims: int, channels: int, args: dict[str, Any] | None) -> VQAutoencoder:
    """The VQ autoencoder of a vqvae (and, identically configured, of the vqar built on it)."""
    return VQAutoencoder(spatial_dims, channels, **(args or {}))


def reconstruct(vqvae: VQAutoencoder, x: Tensor) -> Tensor:
    """Encode, quantise, decode an image of any size (padded to the token stride, cropped back)."""
    padded, size = blocks.pad_to_multiple(x, vqvae.downsample)
    return blocks.crop_to(vqvae.decode_tokens(vqvae.tokens(padded)), size)


@METHODS.register("vqvae")
class VQVAE(Method):
    """VQ-VAE with an EMA codebook: ``loss`` (L1 or L2) + ``commitment`` · ‖z − sg[q]‖².

    Args:
        autoencoder: :class:`medtrans.nets.vq.VQAutoencoder` options (``widths``, ``downsample``,
            ``num_embeddings``, ``embedding_dim``, ``decay``, ``epsilon``, ``residual_blocks``); the
            vqar recipe must repeat them.
        commitment: weight of the commitment term (0.25 as in the paper and MONAI).
        loss: reconstruction loss, ``l1`` (sharper, the MONAI tutorials' choice) or ``l2``.
        restart_every: every N training steps, codes unused since the last check are re-initialised
            from random encoder outputs of the batch (0 turns restarts off).
    """

    reconstructs = True
    standalone = False  # stage 1 of vqar: benchmark entries "all" leave it out

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int = 1,
                 autoencoder: dict[str, Any] | None = None, commitment: float = 0.25, loss: str = "l1",
                 restart_every: int = 10) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.vqvae = build_autoencoder(spatial_dims, out_channels, autoencoder)
        self.commitment = float(commitment)
        self.loss = check_choice("vqvae loss", loss, ("l1", "l2"))
        self.restart_every = int(restart_every)

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        return self.vqvae.parameters()

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        target = batch["target"]
        recon, idx, commitment, z = self.vqvae(target, update=self.training)
        if self.training and self.restart_every and step > 0 and step % self.restart_every == 0:
            self.vqvae.quantizer.restart_dead(z)
        rec = reconstruction(recon, target, self.loss)
        usage, perplexity = code_statistics(idx, self.vqvae.num_embeddings)
        with torch.no_grad():
            mse = (recon.float().clamp(-1, 1) - target.float()).square().mean().clamp_min(1e-10)
            psnr = 10 * torch.log10(DATA_RANGE**2 / mse)
        return {self.loss: rec, "commitment": self.commitment * commitment,
                "usage": usage.detach(), "perplexity": perplexity.detach(), "psnr": psnr.detach()}

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        """The reconstruction of ``source``, which must be a TARGET image (``reconstructs``: trainer
        validation feeds targets; ``medtrans predict`` refuses this method)."""
        return reconstruct(self.vqvae, source)

    @torch.no_grad()
    def example_input(self, batch_size: int, size: int) -> Tensor:
        return torch.zeros(batch_size, self.out_channels, *([size] * self.spatial_dims))
