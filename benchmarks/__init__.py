"""aiofs benchmarks: ``python -m benchmarks`` lists them, ``python -m benchmarks NAME`` runs one.

Each benchmark prints absolute figures and ratios against baselines measured in the same
run, and writes ``benchmarks/results/NAME.json``. A benchmark module defines ``NAME``,
``SUMMARY`` and ``main(argv) -> int``; register it in :data:`BENCHMARKS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module; modules are imported only when listed or run.
BENCHMARKS: dict[str, str] = {
    "layer-overhead": "benchmarks.layer_overhead",
    "compress": "benchmarks.compress",
    "dedup": "benchmarks.dedup",
    "encrypt": "benchmarks.encrypt",
    "quota": "benchmarks.quota",
    "mount": "benchmarks.mount",
    "offline": "benchmarks.offline",
    "drive": "benchmarks.drive",
    "versioning": "benchmarks.versioning",
}


def load(name: str) -> ModuleType:
    """The module of benchmark ``name`` (``KeyError`` if there is none)."""
    return importlib.import_module(BENCHMARKS[name])
