"""Reusable test suites shipped with aiofs, so layers, backends and users test the same way.

* :class:`~aiofs.testing.abstract.FsspecAbstractSuite`: fsspec's own abstract suite
  (copy/get/put/open/pipe) wired to one ``make_fs(tmp_path) -> (fs, root)`` hook.
* :class:`~aiofs.testing.conformance.ConformanceSuite`: ls/info/find/walk/glob/du/rm/mv,
  hidden internals, logical sizes, range reads; same hook.
* :func:`~aiofs.testing.stateful.run_stateful` /
  :func:`~aiofs.testing.stateful.make_state_machine`: a hypothesis model test for any
  fsspec filesystem.
* :class:`~aiofs.testing.faults.FaultInjectingFileSystem`: a layer that fails a seeded
  fraction of calls, or all of them while unplugged.
* :class:`~aiofs.testing.drive_emulator.DriveEmulator`: an in-memory Google Drive v3 server
  on 127.0.0.1 (uploads, queries, revisions, OAuth, fault injection).

Names are imported lazily: ``import aiofs.testing`` loads neither pytest nor hypothesis.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FsspecAbstractSuite": "aiofs.testing.abstract",
    "ConformanceSuite": "aiofs.testing.conformance",
    "FilesystemModel": "aiofs.testing.stateful",
    "make_state_machine": "aiofs.testing.stateful",
    "run_stateful": "aiofs.testing.stateful",
    "FaultInjectingFileSystem": "aiofs.testing.faults",
    "CountingFileSystem": "aiofs.testing.counting",
    "DriveEmulator": "aiofs.testing.drive_emulator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aiofs.testing' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
