"""CycleGAN (Zhu et al. 2017): unpaired translation with two generators and two discriminators.

A is the source domain (``in_channels``), B the target (``out_channels``); ``translate`` runs A→B.
Group ``g``: LSGAN losses of both generators, cycle consistency λ_A·|B→A(A→B(a)) − a| and
λ_B·|A→B(B→A(b)) − b|, identity λ_idt·λ_B·|A→B(b) − b| and λ_idt·λ_A·|B→A(a) − a| (only when
``in_channels == out_channels``: otherwise a generator cannot take the other domain's image, and the
identity terms are off). The fakes are cached (detached) for group ``d``, where each discriminator sees
its real images against fakes drawn through an image history pool, loss halved as in the original.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from medtrans.methods.base import Method
from medtrans.methods.losses import GAN_LOSSES, check_choice, gan_loss, reconstruction
from medtrans.methods.schedules import Noise
from medtrans.nets import build_backbone, build_discriminator
from medtrans.registry import METHODS


class ImagePool(nn.Module):
    """History of generated images (Shrivastava et al. 2017), so discriminators also see older fakes.

    ``query(images)``, per image of the batch in order: while fewer than ``size`` are stored, store it
    and return it; once full, draw ``u = torch.rand(1)`` from the pool's own generator; if ``u > 0.5``
    draw ``k = torch.randint(size, (1,))``, return stored image ``k`` and store the new one in its place,
    else return the new image. ``size = 0`` returns the batch unchanged. The stored images and the
    generator state are the module's extra state, so a checkpoint resumes the same sequence.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        super().__init__()
        self.size = int(size)
        generator = torch.Generator().manual_seed(seed)
        self._rng_state = generator.get_state()
        self.images: list[Tensor] = []

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        generator = torch.Generator()
        generator.set_state(self._rng_state)
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1, generator=generator).item() > 0.5:
                k = int(torch.randint(self.size, (1,), generator=generator).item())
                out.append(self.images[k].to(image))
                self.images[k] = image.clone()
            else:
                out.append(image)
        self._rng_state = generator.get_state()
        return torch.stack(out)

    def get_extra_state(self) -> Tensor:
        """One float32 tensor (checkpoints hold tensors only): [rank, *shape, n_rng, rng bytes, images]."""
        stored = torch.stack([i.float().cpu() for i in self.images]) if self.images else torch.zeros(0)
        shape = list(stored.shape) if self.images else []
        header = torch.tensor([len(shape), *shape, self._rng_state.numel()], dtype=torch.float32)
        return torch.cat([header, self._rng_state.float(), stored.flatten()])

    def set_extra_state(self, state: Tensor) -> None:
        state = state.detach().cpu()
        rank = int(state[0])
        shape = [int(s) for s in state[1 : 1 + rank]]
        n_rng = int(state[1 + rank])
        start = 2 + rank
        self._rng_state = state[start : start + n_rng].to(torch.uint8)
        stored = state[start + n_rng :]
        self.images = list(stored.reshape(shape).unbind(0)) if rank else []


@METHODS.register("cyclegan")
class CycleGAN(Method):
    """Two generators (A→B, B→A), two PatchGANs, cycle and identity losses, image pools.

    Args:
        backbone: both generators, ``{"name": ..., **args}`` (the paper's is ``resnet``).
        discriminator: both discriminators, ``{"name": "patchgan", **args}``.
        lambda_a, lambda_b: cycle-loss weights of the A→B→A and B→A→B cycles (10 in the paper).
        lambda_identity: identity weight relative to λ (0.5 in the paper; 0 when channel counts differ).
        pool_size: images in each history pool (50 in the paper; 0 turns the pools off).
        gan_loss: ``lsgan`` (the paper's) or ``vanilla``.
        seed: seed of the pools' random draws.
        betas: Adam betas of both groups.
    """

    paired = False
    groups = ("g", "d")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 1,
        backbone: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        lambda_a: float = 10.0,
        lambda_b: float = 10.0,
        lambda_identity: float = 0.5,
        pool_size: int = 50,
        gan_loss: str = "lsgan",
        seed: int = 0,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        backbone = backbone or {"name": "resnet"}
        discriminator = discriminator or {"name": "patchgan"}
        self.g_ab = build_backbone(backbone, spatial_dims, in_channels, out_channels)
        self.g_ba = build_backbone(backbone, spatial_dims, out_channels, in_channels)
        self.d_a = build_discriminator(discriminator, spatial_dims, in_channels)
        self.d_b = build_discriminator(discriminator, spatial_dims, out_channels)
        self.pool_a = ImagePool(pool_size, seed)
        self.pool_b = ImagePool(pool_size, seed + 1)
        self.lambda_a, self.lambda_b = float(lambda_a), float(lambda_b)
        self.lambda_identity = float(lambda_identity) if in_channels == out_channels else 0.0
        self.gan_loss = check_choice("gan_loss", gan_loss, GAN_LOSSES)
        self.betas = (float(betas[0]), float(betas[1]))
        self._fakes: tuple[Tensor, Tensor, Tensor] | None = None  # (source, fake A, fake B), detached

    def group_parameters(self, group: str) -> Iterator[nn.Parameter]:
        check_choice("optimiser group", group, self.groups)
        nets = (self.g_ab, self.g_ba) if group == "g" else (self.d_a, self.d_b)
        return chain.from_iterable(net.parameters() for net in nets)

    def optimizer_settings(self, group: str) -> dict[str, Any]:
        return {"betas": self.betas}

    def losses(self, batch: dict[str, Tensor], group: str, step: int = 0) -> dict[str, Tensor]:
        check_choice("optimiser group", group, self.groups)
        real_a, real_b = batch["source"], batch["target"]
        if group == "g":
            fake_b, fake_a = self.g_ab(real_a), self.g_ba(real_b)
            self._fakes = (real_a, fake_a.detach(), fake_b.detach())
            terms = {
                "gan_ab": gan_loss(self.d_b(fake_b), True, self.gan_loss),
                "gan_ba": gan_loss(self.d_a(fake_a), True, self.gan_loss),
                "cycle_a": self.lambda_a * reconstruction(self.g_ba(fake_b), real_a),
                "cycle_b": self.lambda_b * reconstruction(self.g_ab(fake_a), real_b),
            }
            if self.lambda_identity > 0:
                terms["idt_ab"] = (
                    self.lambda_identity * self.lambda_b * reconstruction(self.g_ab(real_b), real_b)
                )
                terms["idt_ba"] = (
                    self.lambda_identity * self.lambda_a * reconstruction(self.g_ba(real_a), real_a)
                )
            return terms
        if self._fakes is not None and self._fakes[0] is real_a:
            fake_a, fake_b = self._fakes[1:]
        else:  # d stepped without the g step of this batch: make the fakes now
            with torch.no_grad():
                fake_a, fake_b = self.g_ba(real_b), self.g_ab(real_a)
        self._fakes = None
        fake_a, fake_b = self.pool_a.query(fake_a), self.pool_b.query(fake_b)
        return {"a": self._judge(self.d_a, real_a, fake_a), "b": self._judge(self.d_b, real_b, fake_b)}

    def _judge(self, discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        """Discriminator loss on real → 1 and fake → 0, halved as in the original."""
        real_term = gan_loss(discriminator(real), True, self.gan_loss)
        return 0.5 * (real_term + gan_loss(discriminator(fake), False, self.gan_loss))

    def sample(self, source: Tensor, steps: int | None, noise: Noise | None) -> Tensor:
        return self.g_ab(source)
