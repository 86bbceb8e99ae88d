"""Storage backends: the bottom of every stack.

``LocalBackend`` is always available. ``DriveBackend`` (Google Drive, needs the ``drive``
extra: aiohttp, google-auth) is imported on first use, so ``import aiofs`` never loads
aiohttp; ``CDNBackend`` arrives with its issue. Any registered fsspec filesystem can also
serve as a backend.
"""

from aiofs.backends.local import LocalBackend

__all__ = ["LocalBackend", "DriveBackend"]

_LAZY = {"DriveBackend": "aiofs.backends.drive"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aiofs.backends' has no attribute {name!r}")
