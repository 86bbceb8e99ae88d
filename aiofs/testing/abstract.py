"""Wiring for fsspec's shipped abstract test suite (``fsspec.tests.abstract``).

fsspec ships copy/get/put/open/pipe tests as mixin classes that need a handful of
fixtures. :class:`FsspecAbstractSuite` provides them from one hook, so running the whole
suite against a layer, backend or stack takes a few lines::

    from aiofs.testing.abstract import FsspecAbstractSuite

    class TestMyLayerAbstract(FsspecAbstractSuite):
        def make_fs(self, tmp_path):
            return MyLayer(fs=LocalBackend(str(tmp_path / "store"))), ""

``make_fs`` returns ``(filesystem, root_path)``: the tests write below ``root_path``, which
must be empty. After each test :meth:`FsspecAbstractSuite.cleanup_fs` removes what the test
left there. Subclasses may instead override the ``fs``, ``fs_path``, ``fs_join`` and
``supports_empty_directories`` fixtures directly, as fsspec documents.
"""

from __future__ import annotations

import posixpath

import pytest
from fsspec.spec import AbstractFileSystem
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from aiofs.layer import EMPTY_DIRECTORIES, capabilities_of, internal_access

__all__ = ["FsspecAbstractSuite", "TargetFixtures", "join_paths", "remove_tree_contents"]


def join_paths(*parts: str) -> str:
    """Join store paths with ``/`` whatever the platform (an empty root joins to nothing)."""
    return posixpath.join(*parts)


def remove_tree_contents(fs: AbstractFileSystem, root: str) -> None:
    """Delete everything below ``root``, internal data included; keep a store root (``""``).

    Used by the shipped suites to clean up after a test, so a shared store (fsspec's
    memory filesystem is one per process) starts each test empty.
    """
    with internal_access():
        if root.strip("/") == "":
            # The store root itself: delete its children, never the root.
            for child in fs.ls(root, detail=False):
                fs.rm(child, recursive=True)
        elif fs.exists(root):
            fs.rm(root, recursive=True)
        fs.invalidate_cache()


class TargetFixtures:
    """The ``make_fs`` hook and the ``fs``/``fs_path`` fixtures shared by the shipped suites.

    Override :meth:`make_fs`; each test gets ``(fs, root)`` from it and
    :meth:`cleanup_fs` removes what the test left below ``root`` afterwards.
    """

    def make_fs(self, tmp_path) -> tuple[AbstractFileSystem, str]:
        """Return ``(filesystem, root_path)`` for one test; ``tmp_path`` is pytest's."""
        raise NotImplementedError(f"{type(self).__name__} must override make_fs")

    def cleanup_fs(self, fs: AbstractFileSystem, root: str) -> None:
        """Remove what a test left below ``root`` (override for targets that need more)."""
        remove_tree_contents(fs, root)

    @pytest.fixture
    def aiofs_target(self, tmp_path):
        """The ``(fs, root)`` pair for one test, cleaned up afterwards."""
        fs, root = self.make_fs(tmp_path)
        try:
            yield fs, root
        finally:
            self.cleanup_fs(fs, root)

    @pytest.fixture
    def fs(self, aiofs_target):
        return aiofs_target[0]

    @pytest.fixture
    def fs_path(self, aiofs_target):
        return aiofs_target[1]


class FsspecAbstractSuite(
    TargetFixtures,
    AbstractFixtures,
    AbstractCopyTests,
    AbstractGetTests,
    AbstractPutTests,
    AbstractOpenTests,
    AbstractPipeTests,
):
    """fsspec's abstract copy/get/put/open/pipe tests, fed by one :meth:`make_fs` hook.

    Subclass it in a ``Test*`` class and override :meth:`make_fs`. Whether the target keeps
    empty directories is read from its capability flags (``aiofs.layer.capabilities_of``).
    """

    @pytest.fixture
    def fs_join(self):
        return join_paths

    @pytest.fixture
    def supports_empty_directories(self, fs):
        return EMPTY_DIRECTORIES in capabilities_of(fs)
