"""Name -> class registries, so a new layout, backbone or method is one file plus one line.

Each kind has a ``Registry``; implementations register themselves with a decorator::

    @BACKBONES.register("unet")
    class UNet(nn.Module): ...

Modules that define implementations are imported lazily by ``_load`` the first time a registry is
asked for a name, so importing ``medtrans`` stays cheap and no module imports another to register it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medtrans.errors import MedtransError


class Registry:
    """A named table of classes (or factories) of one kind."""

    def __init__(self, kind: str, modules: tuple[str, ...]) -> None:
        self.kind = kind
        self._modules = modules
        self._table: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._table and self._table[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._table[name] = obj
            return obj

        return deco

    def _load(self) -> None:
        if not self._loaded:
            for module in self._modules:
                importlib.import_module(module)
            self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._table)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._table:
            raise MedtransError(
                None, f"unknown {self.kind} {name!r}", f"choose one of: {', '.join(self.names())}"
            )
        return self._table[name]


LAYOUTS = Registry("layout", ("medtrans.data.layouts",))
BACKBONES = Registry(
    "backbone", ("medtrans.nets.unet", "medtrans.nets.resnet")
)
DISCRIMINATORS = Registry("discriminator", ("medtrans.nets.patchgan",))
METHODS = Registry(
    "method", ("medtrans.methods.regression", "medtrans.methods.pix2pix", "medtrans.methods.cyclegan")
)
