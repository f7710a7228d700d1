"""Every registered method keeps the engine's contract (runs over the registry: new methods are covered).

For each method: every optimiser group's losses are finite and reach its parameters; ``translate``
keeps the shape; a one-pass method refuses a step count; a stochastic method's samples are
reproducible from a seed and differ between seeds, and its std map is positive.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from medtrans.errors import MedtransError
from medtrans.methods.schedules import Noise
from medtrans.registry import BACKBONES, METHODS

#: constructor arguments that make a method tiny (a method may need its own: add it here)
TINY: dict[str, dict] = {
    "unit": {"backbone": {"name": "resnet", "width": 4, "n_blocks": 2, "n_down": 1}},
    "syndiff": {"discriminator": {"name": "timed_patchgan", "width": 4, "n_layers": 1, "time_dim": 16},
                "nz": 8},
    "bridge": {"adversarial": 0.1, "recursions": 2,  # every option that adds a network or a pass
               "discriminator": {"name": "timed_patchgan", "width": 4, "n_layers": 1, "time_dim": 16}},
}
#: sampling steps to ask for (a method that samples only along its training chain needs its own)
STEPS: dict[str, int] = {"syndiff": 4, "bridge": 10}  # selfrdb samples only with its 10
BACKBONE = {"name": "unet", "width": 4, "depth": 2}
DISCRIMINATOR = {"name": "patchgan", "width": 4, "n_layers": 1}


def build(name: str, backbone: dict | None = None):
    cls = METHODS.get(name)
    params = inspect.signature(cls).parameters
    kwargs = {"backbone": BACKBONE} if "backbone" in params else {}
    if "discriminator" in params:
        kwargs["discriminator"] = DISCRIMINATOR
    kwargs.update(TINY.get(name, {}))
    if backbone is not None:
        kwargs["backbone"] = backbone
    torch.manual_seed(0)
    return cls(spatial_dims=2, in_channels=1, out_channels=1, **kwargs)


def batch(size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    source = torch.rand(2, 1, size, size, generator=g) * 2 - 1
    return {"source": source, "target": (0.5 * source + 0.1).clamp(-1, 1),
            "mask": torch.ones(2, 1, size, size)}


@pytest.mark.parametrize("name", METHODS.shipped())
def test_every_group_trains_its_own_parameters(name: str) -> None:
    method = build(name).train()
    data = batch()
    for group in method.groups:
        params = list(method.group_parameters(group))
        assert params, group
        method.zero_grad(set_to_none=True)
        terms = method.losses(data, group, step=0)
        total = sum(v for v in terms.values())
        assert torch.isfinite(total), (group, terms)
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), group


@pytest.mark.parametrize("name", METHODS.shipped())
def test_translate_keeps_shape_and_honours_steps_samples_and_seed(name: str) -> None:
    method = build(name).eval()
    source = batch(24)["source"]
    with torch.no_grad():
        if method.default_steps is None:
            with pytest.raises(MedtransError, match="takes no step count"):
                method.translate(source, steps=3)
            mean, std = method.translate(source)
            assert mean.shape == source.shape and method.evaluations(None) >= 1
            if not method.stochastic:
                assert std is None
                return
        steps = None if method.default_steps is None else STEPS.get(name, 2)
        draw = [method.translate(source, steps, 1, Noise.seeded([s, s + 1]))[0] for s in (5, 5, 6)]
        assert draw[0].shape == source.shape
        assert torch.equal(draw[0], draw[1]), "the same seed must give the same sample"
        assert not torch.equal(draw[0], draw[2]), "another seed must give another sample"
        mean, std = method.translate(source, steps, 3, Noise.seeded([1, 2]))
        assert std is not None and std.shape == source.shape and float(std.mean()) > 0
        assert method.evaluations(steps) >= (steps or 1)


def _takes_backbone(name: str) -> bool:
    return "backbone" in inspect.signature(METHODS.get(name)).parameters


#: methods that take only some backbones (they refuse the others with a one-line error)
FITS_ONLY: dict[str, set[str]] = {"unit": {"resnet"}}


@pytest.mark.parametrize("backbone", BACKBONES.shipped())
@pytest.mark.parametrize("name", [m for m in METHODS.shipped() if _takes_backbone(m)])
def test_every_method_trains_and_translates_on_every_backbone(name: str, backbone: str) -> None:
    """The family × backbone matrix: one step of every group and a 2-sample translation."""
    from tests.nets.tiny_nets import TINY as TINY_BACKBONES

    spec = TINY.get(name, {}).get("backbone") if backbone == "resnet" and name in FITS_ONLY else None
    spec = spec or {"name": backbone, **TINY_BACKBONES[backbone]}
    if name in FITS_ONLY and backbone not in FITS_ONLY[name]:
        with pytest.raises(MedtransError):
            build(name, backbone=spec)
        return
    method = build(name, backbone=spec).train()
    data = batch()
    for group in method.groups:
        method.zero_grad(set_to_none=True)
        total = sum(method.losses(data, group, step=0).values())
        assert torch.isfinite(total), (group, float(total))
        total.backward()
    method.eval()
    steps = None if method.default_steps is None else STEPS.get(name, 2)
    with torch.no_grad():
        mean, _ = method.translate(data["source"], steps, 2, Noise.seeded([0, 1]))
    assert mean.shape == data["source"].shape and torch.isfinite(mean).all()
