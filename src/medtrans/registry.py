"""Name -> class registries, so a new layout, backbone or method is one file plus one line.

Each kind has a ``Registry`` that maps every name to the module defining it; the module registers
its class with a decorator::

    @BACKBONES.register("unet")
    class UNet(nn.Module): ...

Asking for a name imports only the module of that name, so validating a config that uses ``unet``
never imports the Mamba or VQ modules: an optional dependency that fails to import breaks only the
component that needs it, and listing the names (for error messages) imports nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medtrans.errors import MedtransError


class Registry:
    """A named table of classes (or factories) of one kind, each imported on first use."""

    def __init__(self, kind: str, modules: dict[str, str]) -> None:
        self.kind = kind
        self._modules = dict(modules)
        self._table: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._table and self._table[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._table[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        """Every known name (nothing is imported)."""
        return sorted(set(self._modules) | set(self._table))

    def shipped(self) -> list[str]:
        """The names medtrans itself provides (not those a plugin or a test registered at run time)."""
        return sorted(self._modules)

    def __contains__(self, name: object) -> bool:
        return name in self._modules or name in self._table

    def get(self, name: str) -> Any:
        if name not in self:
            raise MedtransError(
                None, f"unknown {self.kind} {name!r}", f"choose one of: {', '.join(self.names())}"
            )
        if name not in self._table:
            importlib.import_module(self._modules[name])
            if name not in self._table:  # the table and the module disagree: a bug, not a user error
                raise RuntimeError(f"module {self._modules[name]} did not register {self.kind} {name!r}")
        return self._table[name]


LAYOUTS = Registry("layout", {
    name: "medtrans.data.layouts" for name in ("generic", "nnunet", "brats", "synthrad", "ixi")
})
BACKBONES = Registry("backbone", {
    "unet": "medtrans.nets.unet",
    "resnet": "medtrans.nets.resnet",
    "resvit": "medtrans.nets.resvit",
    "mamba": "medtrans.nets.ssm",
})
DISCRIMINATORS = Registry("discriminator", {
    "patchgan": "medtrans.nets.patchgan",
    "timed_patchgan": "medtrans.nets.timed_patchgan",
})
METHODS = Registry("method", {
    "regression": "medtrans.methods.regression",
    "pix2pix": "medtrans.methods.pix2pix",
    "cyclegan": "medtrans.methods.cyclegan",
    "ddpm": "medtrans.methods.ddpm",
    "flow": "medtrans.methods.flow",
    "bridge": "medtrans.methods.bridge",
    "nflow": "medtrans.methods.nflow",
    "syndiff": "medtrans.methods.syndiff",
    "cvae": "medtrans.methods.cvae",
    "unit": "medtrans.methods.unit",
    "vqvae": "medtrans.methods.vqvae",
    "vqar": "medtrans.methods.vqar",
})
