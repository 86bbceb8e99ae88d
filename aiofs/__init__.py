"""aiofs: a pluggable virtual filesystem built as a stack of fsspec layers.

Public API: ``open_stack`` (a named stack from config, or by ``aiofs://`` URL), ``Layer``
(the base class of every layer; used directly, a pass-through layer), and the backends
and layers in ``aiofs.backends`` and ``aiofs.layers``.
"""

from aiofs.backends import LocalBackend
from aiofs.layer import Layer, find_layer, internal_access, is_internal
from aiofs.stack import open_stack

__version__ = "0.1.0"

__all__ = [
    "Layer",
    "LocalBackend",
    "find_layer",
    "internal_access",
    "is_internal",
    "open_stack",
]
