"""Backbones (image → image networks) and discriminators, built by name from a config dict."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medtrans.errors import MedtransError
from medtrans.registry import BACKBONES, DISCRIMINATORS, Registry


def _build(registry: Registry, spec: dict[str, Any] | str, *args: int) -> nn.Module:
    """Build ``registry[spec["name"]](*args, **rest of spec)``; a wrong option names the allowed ones."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    if "name" not in spec:
        raise MedtransError(
            None,
            f"{registry.kind} spec {spec!r} has no 'name'",
            f"add name: one of {', '.join(registry.names())}",
        )
    name = spec.pop("name")
    cls = registry.get(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "spatial_dims", "in_channels", "out_channels")]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise MedtransError(
            None,
            f"{registry.kind} {name!r} has no option {', '.join(map(repr, unknown))}",
            f"allowed: {', '.join(allowed)}",
        )
    return cls(*args, **spec)


#: time-embedding size a method gets when it asks for time conditioning and the spec does not say
DEFAULT_TIME_DIM = 128


def build_backbone(
    spec: dict[str, Any] | str, spatial_dims: int, in_channels: int, out_channels: int,
    time_conditioned: bool = False,
) -> nn.Module:
    """A backbone from ``{"name": "unet", **options}``: ``net(x, t=None, emb=None)`` maps
    ``(B, C_in, *spatial) -> (B, C_out, *spatial)``.

    ``time_conditioned`` (diffusion, flow, bridge methods) gives it a time embedding of
    ``time_dim`` (the spec's, else ``DEFAULT_TIME_DIM``) feeding FiLM layers; without it ``t`` is refused.
    """
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    if time_conditioned:
        spec.setdefault("time_dim", DEFAULT_TIME_DIM)
    return _build(BACKBONES, spec, spatial_dims, in_channels, out_channels)


def build_discriminator(spec: dict[str, Any] | str, spatial_dims: int, in_channels: int) -> nn.Module:
    """A discriminator from ``{"name": "patchgan", **options}``: ``(B, C, *spatial) -> (B, 1, *patches)``."""
    return _build(DISCRIMINATORS, spec, spatial_dims, in_channels)


__all__ = ["DEFAULT_TIME_DIM", "build_backbone", "build_discriminator"]
