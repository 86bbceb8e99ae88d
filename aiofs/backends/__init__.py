"""Storage backends: the bottom of every stack.

``LocalBackend`` is always available; ``DriveBackend`` and ``CDNBackend`` arrive with their
issues. Any registered fsspec filesystem can also serve as a backend.
"""

from aiofs.backends.local import LocalBackend

__all__ = ["LocalBackend"]
