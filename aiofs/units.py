"""Sizes given as options: ``1048576``, ``"64KiB"``, ``"100MB"``, ``"5 GB"``.

K, M, G, T, P are powers of 1024, with or without ``i`` and ``B`` (storage tools disagree on
decimal units; one reading everywhere in aiofs is what matters).
"""

from __future__ import annotations

import re
from typing import Any

from aiofs.errors import InvalidArgument

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Any, name: str = "size") -> int | None:
    """Bytes from an int or a string such as ``"100MB"``; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a size, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise InvalidArgument(f"{name} must not be negative, got {value!r}")
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise InvalidArgument(f"{name}: cannot read {value!r} as a size (e.g. 100MB, 5GB, 1048576)")
