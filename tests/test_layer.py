"""Layer, the pass-through base class: contract checks and the shipped suites over it."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem
from hypothesis import Phase

from aiofs import Layer, LocalBackend, find_layer, internal_access, is_internal
from aiofs.errors import InvalidArgument
from aiofs.layer import (
    ATOMIC_WRITES, EMPTY_DIRECTORIES, NATIVE_VERSIONS, RANGE_READS, SERVER_SIDE_COPY,
    capabilities_of,
)
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.stateful import run_stateful
from conftest import drop_memory_root, new_memory_root, snapshot_tree


class Marker(Layer):
    """A do-nothing layer subclass, to tell layers apart in a stack."""


class NoEmptyDirs(Layer):
    """A layer that cannot keep empty directories but adds native versions."""

    removes_capabilities = frozenset({EMPTY_DIRECTORIES})
    adds_capabilities = frozenset({NATIVE_VERSIONS})


class OddFileSystem(AbstractFileSystem):
    """An fsspec filesystem aiofs knows nothing about."""

    protocol = "aiofs-test-odd"


# -- the shipped suites over Layer(Local) and Layer(Memory) ------------------------------------


def layer_over_local(tmp_path, root=""):
    return Layer(fs=LocalBackend(str(tmp_path / "store"))), root


def layer_over_memory(tmp_path=None):
    return Layer(fs=fsspec.filesystem("memory")), new_memory_root()


class MemoryCleanup:
    def cleanup_fs(self, fs, root):
        drop_memory_root(root)


class TestLayerOverLocalAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return layer_over_local(tmp_path, "/data")


class TestLayerOverLocalConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return layer_over_local(tmp_path)


class TestLayerOverMemoryAbstract(MemoryCleanup, FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return layer_over_memory()


class TestLayerOverMemoryConformance(MemoryCleanup, ConformanceSuite):
    def make_fs(self, tmp_path):
        return layer_over_memory()


def test_layer_over_local_stateful_model(tmp_path):
    fs = Layer(fs=LocalBackend(str(tmp_path / "store"), fsync=False))
    counter = itertools.count()
    assert run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=500) >= 500


def test_layer_over_memory_stateful_model():
    fs = Layer(fs=fsspec.filesystem("memory"))
    roots = []

    def factory():
        roots.append(new_memory_root())
        return fs, roots[-1]

    try:
        assert run_stateful(factory, max_examples=500) >= 500
    finally:
        for root in roots:
            drop_memory_root(root)
    assert len(roots) >= 500


# The stateful model's find (minimal example, seen about one run in four): fsspec's memory
# filesystem moves a directory to a new parent without making that parent a directory of its
# own (it is only implied by its child), so it vanished with its last child although
# makedirs() had been called for it.
@pytest.mark.parametrize("stack", ["memory", "memory-under-two-layers", "local"])
def test_a_directory_moved_to_a_new_parent_keeps_that_parent(tmp_path, memory_root, stack):
    if stack == "local":
        fs, root = Layer(fs=LocalBackend(str(tmp_path / "store"))), ""
    else:
        fs, root = Layer(fs=fsspec.filesystem("memory")), memory_root
        if stack == "memory-under-two-layers":
            fs = Marker(fs=fs)
    fs.makedirs(f"{root}/d1/d0")
    fs.mv(f"{root}/d1", f"{root}/d0/d1", recursive=True)
    fs.makedirs(f"{root}/d0/d1", exist_ok=True)  # d0 must now exist whatever the target
    fs.rm(f"{root}/d0/d1", recursive=True)
    assert fs.isdir(f"{root}/d0") and fs.ls(f"{root}/d0", detail=False) == []


# -- constructor -------------------------------------------------------------------------------


def test_constructor_needs_exactly_one_target(tmp_path):
    with pytest.raises(InvalidArgument) as err:
        Layer()
    assert err.value.code == "INVALID_ARGUMENT" and "exactly one" in str(err.value)
    with pytest.raises(ValueError):  # InvalidArgument is a ValueError too
        Layer(fs=LocalBackend(str(tmp_path)), target_protocol="memory")


def test_constructor_from_target_protocol(tmp_path):
    layer = Layer(target_protocol="memory")
    assert isinstance(layer.fs, MemoryFileSystem)
    local = Layer(target_protocol="aiofs-local", target_options={"root": str(tmp_path / "s")})
    assert isinstance(local.fs, LocalBackend)
    assert local.fs.root == str(tmp_path / "s")
    local.pipe_file("a.txt", b"via protocol")
    assert (tmp_path / "s" / "a.txt").read_bytes() == b"via protocol"


# -- stack introspection -----------------------------------------------------------------------


def test_repr_shows_the_whole_stack(tmp_path):
    backend = LocalBackend(str(tmp_path))
    assert repr(backend) == f"Local({str(tmp_path)!r})"
    assert repr(Layer(fs=Layer(fs=backend))) == f"Layer(Layer(Local({str(tmp_path)!r})))"
    assert repr(Marker(fs=Layer(fs=backend))) == f"Marker(Layer(Local({str(tmp_path)!r})))"
    assert repr(Layer(fs=MemoryFileSystem())) == "Layer(Memory())"


def test_find_layer(tmp_path):
    backend = LocalBackend(str(tmp_path))
    marker = Marker(fs=backend)
    top = Layer(fs=NoEmptyDirs(fs=marker))
    assert top.find_layer(Marker) is marker
    assert top.find_layer(LocalBackend) is backend
    assert top.find_layer(Layer) is top  # the first match, top down
    assert top.find_layer(NoEmptyDirs) is top.fs
    assert top.find_layer(MemoryFileSystem) is None
    assert marker.find_layer(NoEmptyDirs) is None  # never looks up the stack
    assert find_layer(top, Marker) is marker
    assert find_layer(backend, LocalBackend) is backend
    assert find_layer(backend, Marker) is None


def test_capabilities_are_combined_down_the_stack(tmp_path):
    backend = LocalBackend(str(tmp_path))
    assert Layer(fs=backend).capabilities == backend.capabilities
    assert EMPTY_DIRECTORIES in Layer(fs=backend).capabilities
    over_memory = Layer(fs=MemoryFileSystem())
    assert over_memory.capabilities == capabilities_of(MemoryFileSystem())
    assert SERVER_SIDE_COPY in over_memory.capabilities
    removed = NoEmptyDirs(fs=backend).capabilities
    assert EMPTY_DIRECTORIES not in removed and NATIVE_VERSIONS in removed
    assert ATOMIC_WRITES in removed
    # A layer above the one that removed a capability cannot bring it back.
    assert EMPTY_DIRECTORIES not in Layer(fs=NoEmptyDirs(fs=backend)).capabilities
    assert NATIVE_VERSIONS in Layer(fs=NoEmptyDirs(fs=backend)).capabilities
    assert Layer(fs=OddFileSystem()).capabilities == frozenset({RANGE_READS})


# -- pickling ----------------------------------------------------------------------------------


def test_pickle_rebuilds_the_stack(tmp_path):
    stack = Marker(fs=Layer(fs=LocalBackend(str(tmp_path / "store"))))
    stack.pipe_file("notes/a.txt", b"pickled data")
    clone = pickle.loads(pickle.dumps(stack))
    assert clone is not stack
    assert repr(clone) == repr(stack)
    assert isinstance(clone, Marker) and isinstance(clone.fs, Layer)
    assert clone.cat_file("notes/a.txt") == b"pickled data"
    clone.pipe_file("notes/b.txt", b"written by the clone")
    assert stack.cat_file("notes/b.txt") == b"written by the clone"


def test_pickle_rebuilds_the_stack_in_another_process(tmp_path):
    stack = Layer(fs=Layer(fs=LocalBackend(str(tmp_path / "store"))))
    stack.pipe_file("a.bin", b"\x00\x01 cross-process")
    script = (
        "import pickle, sys\n"
        "fs = pickle.loads(sys.stdin.buffer.read())\n"
        "sys.stdout.write(repr(fs) + '\\n' + fs.cat_file('a.bin').hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], input=pickle.dumps(stack), capture_output=True,
        check=True, timeout=60,
    ).stdout.decode()
    stack_repr, content = out.split("\n")
    assert stack_repr == repr(stack)
    assert bytes.fromhex(content) == b"\x00\x01 cross-process"


def test_layer_instances_are_not_shared_by_fsspec_cache(tmp_path):
    backend = LocalBackend(str(tmp_path))
    assert Layer(fs=backend) is not Layer(fs=backend)


# -- internal paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "internal"),
    [
        (".aiofs", True), (".aiofs/index.db", True), ("a/.aiofs/x", True), ("/.aiofs/", True),
        ("a\\.aiofs\\x", True), ("", False), ("a.aiofs/x", False), (".aiofsx/y", False),
        ("x/.aiofs-tmp-123-a", False), ("notes/.aiofs.txt", False),
    ],
)
def test_is_internal(path, internal):
    assert is_internal(path) is internal


def test_internal_paths_hidden_through_the_layer(tmp_path):
    backend = LocalBackend(str(tmp_path / "store"))
    layer = Layer(fs=backend)
    with internal_access():
        layer.pipe_file(".aiofs/journal", b"j")
    layer.pipe_file("visible.txt", b"v")
    assert layer.ls("", detail=False) == ["/visible.txt"]
    assert not layer.exists(".aiofs/journal")
    with pytest.raises(PermissionError):
        layer.pipe_file(".aiofs/journal", b"overwrite")
    assert (tmp_path / "store" / ".aiofs" / "journal").read_bytes() == b"j"
    with internal_access():
        assert sorted(layer.ls("", detail=False)) == ["/.aiofs", "/visible.txt"]


# -- bad input passes through the layer unchanged ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [("../escape.txt", "INVALID_PATH"), ("a\x00b", "INVALID_PATH"), ("x" * 256, "NAME_TOO_LONG"),
     ("bad-\udcff.txt", "INVALID_PATH")],
)
def test_bad_paths_through_a_layer(tmp_path, path, code):
    layer = Layer(fs=LocalBackend(str(tmp_path / "store")))
    layer.pipe_file("keep.txt", b"keep")
    before = snapshot_tree(tmp_path)
    for attempt in (lambda: layer.pipe_file(path, b"x"), lambda: layer.cat_file(path),
                    lambda: layer.mkdir(path), lambda: layer.mv("keep.txt", path)):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.code == code
    assert snapshot_tree(tmp_path) == before


# -- the shipped suites can fail: broken layers are caught ------------------------------------


class OffByOneSizes(Layer):
    """Reports the stored size of a file plus one byte (a compression layer's classic bug)."""

    def _logical_entry(self, entry):
        if entry.get("type") == "file":
            return {**entry, "size": entry["size"] + 1}
        return entry


class LosesOverwrites(Layer):
    """Silently ignores a write over an existing file of more than 16 bytes."""

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if self.fs.exists(path) and len(value) > 16:
            return None
        return super().pipe_file(path, value, mode=mode, **kwargs)


class LeakyListing(Layer):
    """Lists internal data: the hiding is forgotten in ls."""

    def ls(self, path, detail=True, **kwargs):
        with internal_access():
            return self.fs.ls(path, detail=detail, **kwargs)


def _has_assertion(exc: BaseException) -> bool:
    if isinstance(exc, AssertionError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_has_assertion(e) for e in exc.exceptions)
    return False


@pytest.mark.parametrize("broken", [OffByOneSizes, LosesOverwrites])
def test_stateful_model_catches_a_broken_layer(tmp_path, broken):
    fs = broken(fs=LocalBackend(str(tmp_path / "store"), fsync=False))
    counter = itertools.count()
    with pytest.raises(BaseException) as info:
        run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=200,
                     derandomize=True, database=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking
    assert _has_assertion(info.value), info.value


def test_conformance_suite_catches_wrong_sizes_and_leaks(tmp_path):
    suite = ConformanceSuite()
    with pytest.raises(AssertionError):
        suite.test_logical_sizes(OffByOneSizes(fs=LocalBackend(str(tmp_path / "a"))), "")
    with pytest.raises(AssertionError):
        suite.test_hidden_internals_not_listed(LeakyListing(fs=LocalBackend(str(tmp_path / "b"))), "")
    # and the same tests pass on the correct layer
    suite.test_logical_sizes(Layer(fs=LocalBackend(str(tmp_path / "c"))), "")
    suite.test_hidden_internals_not_listed(Layer(fs=LocalBackend(str(tmp_path / "d"))), "")


class CachingMemory(MemoryFileSystem):
    """A memory filesystem whose ls hands out the same cached dicts (like s3fs's dircache)."""

    cachable = False

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if path not in self.dircache:
            self.dircache[path] = super().ls(path, detail=True)
        entries = self.dircache[path]
        return entries if detail else [e["name"] for e in entries]


class MutatesTargetEntries(Layer):
    """Annotates the target's own entries in place instead of copying them."""

    def _logical_entry(self, entry):
        entry["seen_by_layer"] = True
        return entry


def test_conformance_suite_catches_mutated_target_entries(memory_root):
    suite = ConformanceSuite()
    suite.test_logical_sizes(Layer(fs=CachingMemory()), memory_root)
    drop_memory_root(memory_root)
    with pytest.raises(AssertionError, match="changed its target"):
        suite.test_logical_sizes(MutatesTargetEntries(fs=CachingMemory()), memory_root)
