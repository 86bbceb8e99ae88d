"""Storage layers, one per module. Each wraps any fsspec filesystem (see ``aiofs.Layer``).

Names are imported lazily, so ``import aiofs.layers`` costs nothing until a layer is used.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it; layers land here as their issues do
_LAYERS = {
    "Compress": "aiofs.layers.compress",
    "Dedup": "aiofs.layers.dedup",
    "Encrypt": "aiofs.layers.encrypt",
    "Offline": "aiofs.layers.offline",
    "Quota": "aiofs.layers.quota",
    "Validate": "aiofs.layers.validate",
    "Versioning": "aiofs.layers.versioning",
}

__all__ = sorted(_LAYERS)


def __getattr__(name: str):
    if name in _LAYERS:
        return getattr(importlib.import_module(_LAYERS[name]), name)
    raise AttributeError(f"module 'aiofs.layers' has no attribute {name!r}")


def __dir__():
    return __all__
