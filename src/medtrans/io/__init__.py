"""Medical image I/O that keeps geometry: ``load``, ``save``, ``describe`` and the ``Volume``."""

from medtrans.io.api import describe, load, save
from medtrans.io.volume import SyntheticInfo, Volume

__all__ = ["SyntheticInfo", "Volume", "describe", "load", "save"]
