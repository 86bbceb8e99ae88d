"""Shared fixtures: on-disk snapshots and unique roots on fsspec's (process-global) memory fs."""

from __future__ import annotations

import os
import uuid

import fsspec
import pytest

from aiofs.layer import internal_access


def snapshot_tree(top) -> dict[str, object]:
    """Every entry below ``top`` on disk (hidden and temporary files included).

    Files map to their bytes, directories to ``"<dir>"``, anything else to its mode.
    """
    top = os.fspath(top)
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), top)] = "<dir>"
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    out[rel] = f.read()
            else:
                out[rel] = os.lstat(full).st_mode
    return out


@pytest.fixture
def snapshot():
    """The :func:`snapshot_tree` function, for "changes nothing on disk" assertions."""
    return snapshot_tree


def new_memory_root() -> str:
    """A fresh top-level directory on fsspec's memory filesystem."""
    return f"/aiofs-test-{uuid.uuid4().hex}"


def drop_memory_root(root: str) -> None:
    """Remove ``root`` (internal data included) from the shared memory store."""
    mem = fsspec.filesystem("memory")
    with internal_access():
        for key in [k for k in mem.store if k == root or k.startswith(root + "/")]:
            del mem.store[key]
        mem.pseudo_dirs[:] = [
            d for d in mem.pseudo_dirs if not (d == root or d.startswith(root + "/"))
        ]


@pytest.fixture
def memory_root():
    """A unique root on the memory filesystem, removed after the test."""
    root = new_memory_root()
    yield root
    drop_memory_root(root)


@pytest.fixture(autouse=True)
def _private_user_dirs(tmp_path_factory, monkeypatch):
    """Per-test platformdirs locations (XDG dirs, inherited by subprocesses).

    Compress and Dedup caches, versioning locks, Quota state, usage history, the user config
    and the default storage live there: never the developer's own, and never shared with
    another test, a concurrent pytest-xdist worker or another run in the same tree.
    """
    base = tmp_path_factory.mktemp("user-dirs")
    for var, name in (("XDG_CACHE_HOME", "cache"), ("XDG_STATE_HOME", "state"),
                      ("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config")):
        monkeypatch.setenv(var, str(base / name))


@pytest.fixture
def isolated_storage(tmp_path, monkeypatch):
    """A private default-stack root, no user config file, and no shared stack instances."""
    from aiofs.stack import forget_open_stacks

    root = tmp_path / "storage"
    monkeypatch.setenv("LOCAL_STORAGE_PATH", str(root))
    monkeypatch.setenv("AIOFS_CONFIG", str(tmp_path / "no-config.toml"))
    forget_open_stacks()
    yield root
    forget_open_stacks()
