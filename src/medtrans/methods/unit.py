"""UNIT (Liu, Breuel & Kautz 2017): unpaired translation through a shared latent space.

A is the source domain (``in_channels``), B the target (``out_channels``). Each domain has a ResNet
generator (the configured ``resnet`` backbone) split at its middle: the stem, the downsamplings and the
first half of the residual blocks are the encoder E, the rest the decoder G. The last ``n_shared``
encoder blocks and the first ``n_shared`` decoder blocks are the SAME module objects in both domains,
which ties the two latent spaces into one. E outputs the mean μ of a unit-variance Gaussian latent,
z = μ + ε; A → B is G_B(E_A(a) + ε).

Group ``g`` (defaults λ0..λ4 = 10, 0.1, 100, 0.1, 100 from the paper): VAE terms λ1·KL(μ) +
λ2·|G_A(z_a) − a| per domain (KL(N(μ, 1) ‖ N(0, 1)) = ½μ², averaged over latent elements); GAN terms
λ0 on the translations G_B(z_a) and G_A(z_b), against the CycleGAN discriminators and pools (group ``d``
is CycleGAN's: ``DomainDiscriminators``); cycle terms λ3·KL of the re-encoded translation and
λ4·|G_A(E_B(G_B(z_a)) + ε) − a|, per domain.

Uncertainty comes only from ε (weak: the decoders learn to ignore unit noise on a latent whose scale
they choose); ``mean_only`` translates with z = μ as the original test code does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from medtrans.errors import MedtransError
from medtrans.methods.base import Method
from medtrans.methods.cyclegan import DomainDiscriminators
from medtrans.methods.losses import check_choice, gan_loss, reconstruction
from medtrans.methods.schedules import Noise, randn_like
from medtrans.nets import blocks, build_backbone
from medtrans.nets.resnet import ResidualBlock, ResNetGenerator
from medtrans.registry import METHODS


def split_generators(spec: dict[str, Any], spatial_dims: int, channels_a: int, channels_b: int,
                     n_shared: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential, nn.Sequential]:
    """(E_A, G_A, E_B, G_B) from two ResNet generators cut between their residual blocks, with the
    ``n_shared`` blocks on each side of the cut taken from A's generator into B's."""
    gen_a = build_backbone(spec, spatial_dims, channels_a, channels_a)
    gen_b = build_backbone(spec, spatial_dims, channels_b, channels_b)
    if not isinstance(gen_a, ResNetGenerator):
        raise MedtransError(None, f"unit splits a resnet generator into encoder and decoder, got backbone "
                            f"{spec.get('name')!r}", "use backbone name: resnet")
    layers_a, layers_b = list(gen_a.model), list(gen_b.model)
    res = [i for i, layer in enumerate(layers_a) if isinstance(layer, ResidualBlock)]
    cut = res[len(res) // 2] if res else len(layers_a)
    if not 0 <= n_shared <= min(len(res) // 2, len(res) - len(res) // 2):
        raise MedtransError(None, f"unit cannot share {n_shared} residual blocks on each side of a "
                            f"{len(res)}-block generator", f"use n_shared ≤ {len(res) // 2} or more "
                            "backbone n_blocks")
    for i in range(cut - n_shared, cut + n_shared):
        layers_b[i] = layers_a[i]
    return (nn.Sequential(*layers_a[:cut]), nn.Sequential(*layers_a[cut:]),
            nn.Sequential(*layers_b[:cut]), nn.Sequential(*layers_b[cut:]))


def latent_kl(mu: Tensor) -> Tensor:
    """KL(N(μ, I) ‖ N(0, I)) per latent element, averaged: ½·mean(μ²)."""
    return 0.5 * mu.float().square().mean()


@METHODS.register("unit")
class UNIT(DomainDiscriminators, Method):
    """Shared-latent VAE-GAN pair for unpaired translation.

    Args:
        backbone: ``{"name": "resnet", **args}``, split into encoder and decoder (``n_blocks`` ≥ 2).
        discriminator: both discriminators, ``{"name": "patchgan", **args}``.
        n_shared: residual blocks shared at the end of the encoders and at the start of the decoders.
        lambda_gan, lambda_kl, lambda_rec, lambda_cycle_kl, lambda_cycle: λ0..λ4 of the paper.
        mean_only: translate with z = μ (deterministic) instead of z = μ + ε.
        pool_size, gan_loss, seed: of the discriminators' image pools and loss (as in ``cyclegan``).
        betas: Adam betas of both groups (the paper's (0.5, 0.999)).
    """

    paired = False
    groups = ("g", "d")
    stochastic = True

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        n_shared: int = 1,
        lambda_gan: float = 10.0,
        lambda_kl: float = 0.1,
        lambda_rec: float = 100.0,
        lambda_cycle_kl: float = 0.1,
        lambda_cycle: float = 100.0,
        mean_only: bool = False,
        pool_size: int = 50,
        gan_loss: str = "lsgan",
        seed: int = 0,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        spec = {"name": "resnet", "n_blocks": 4} if backbone is None else dict(backbone)
        self.encoder_a, self.decoder_a, self.encoder_b, self.decoder_b = split_generators(
            spec, spatial_dims, in_channels, out_channels, int(n_shared))
        self.n_shared = int(n_shared)
        self.multiple = 2 ** int(spec.get("n_down", 2))
        self._init_discriminators(discriminator, spatial_dims, in_channels, out_channels, pool_size, seed,
                                  gan_loss)
        self.lambdas = tuple(float(v) for v in (lambda_gan, lambda_kl, lambda_rec, lambda_cycle_kl,
                                                lambda_cycle))
        self.mean_only = bool(mean_only)
        self.stochastic = not self.mean_only
        self.betas = (float(betas[0]), float(betas[1]))

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        nets = ((self.encoder_a, self.decoder_a, self.encoder_b, self.decoder_b) if group == "g"
                else (self.d_a, self.d_b))
        # the shared blocks belong to two nets: each parameter once
        return iter(dict.fromkeys(p for net in nets for p in net.parameters()))

    def optimizer_settings(self, group: str) -> dict[str, Any]:
        return {"betas": self.betas}

    def encode(self, x: Tensor, domain: str) -> tuple[Tensor, tuple[int, ...]]:
        """Latent mean μ of ``x`` in ``domain`` (``a`` | ``b``) and ``x``'s size (for ``decode``)."""
        x, size = blocks.pad_to_multiple(x, self.multiple, "reflect")
        return (self.encoder_a if domain == "a" else self.encoder_b)(x), size

    def decode(self, z: Tensor, domain: str, size: tuple[int, ...]) -> Tensor:
        return blocks.crop_to((self.decoder_a if domain == "a" else self.decoder_b)(z), size)

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        real_a, real_b = batch["source"], batch["target"]
        if group == "d":
            return self._discriminator_losses(real_a, real_b)
        lam_gan, lam_kl, lam_rec, lam_cycle_kl, lam_cycle = self.lambdas
        terms: dict[str, Tensor] = {}
        fakes = {}
        for own, other, real in (("a", "b", real_a), ("b", "a", real_b)):
            mu, size = self.encode(real, own)
            z = mu + randn_like(mu, None)
            fake = self.decode(z, other, size)  # the translation own → other
            fakes[other] = fake
            back_mu, _ = self.encode(fake, other)
            back = self.decode(back_mu + randn_like(back_mu, None), own, size)
            judge = self.d_b if other == "b" else self.d_a
            terms[f"kl_{own}"] = lam_kl * latent_kl(mu)
            terms[f"rec_{own}"] = lam_rec * reconstruction(self.decode(z, own, size), real)
            terms[f"gan_{own}{other}"] = lam_gan * gan_loss(judge(fake), True, self.gan_loss)
            terms[f"cycle_kl_{own}"] = lam_cycle_kl * latent_kl(back_mu)
            terms[f"cycle_{own}"] = lam_cycle * reconstruction(back, real)
        self._fakes = (real_a, fakes["a"].detach(), fakes["b"].detach())
        return terms

    def _translate(self, x: Tensor, own: str, other: str, noise: Noise | None) -> Tensor:
        mu, size = self.encode(x, own)
        return self.decode(mu if self.mean_only else mu + randn_like(mu, noise), other, size)

    def _fakes_now(self, real_a: Tensor, real_b: Tensor) -> tuple[Tensor, Tensor]:
        return self._translate(real_b, "b", "a", None), self._translate(real_a, "a", "b", None)

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        return self._translate(source, "a", "b", noise)
