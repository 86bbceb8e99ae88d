"""LocalBackend: the shipped suites, bad input, atomic writes (including kill -9)."""

from __future__ import annotations

import itertools
import shutil
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from aiofs import Layer, LocalBackend
from aiofs.backends.local import TEMP_PREFIX
from aiofs.errors import (
    AlreadyExists, InvalidPath, IsADirectory, NameTooLong, NotADirectory, NotFound,
)
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.stateful import run_stateful
from conftest import snapshot_tree


def make_local(tmp_path):
    return LocalBackend(str(tmp_path / "store")), "/"


class TestLocalAbstract(FsspecAbstractSuite):
    # Below a subdirectory: fsspec's generic get/copy name mapping misreads top-level
    # names without a "/" (``get("src", existing_dir, recursive=True)``).
    def make_fs(self, tmp_path):
        return LocalBackend(str(tmp_path / "store")), "/"


class TestLocalConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return make_local(tmp_path)


class TestLocalConformanceInSubdirectory(ConformanceSuite):
    """The same contract when the tests run below a subdirectory of the store."""

    def make_fs(self, tmp_path):
        return LocalBackend(str(tmp_path / "store")), "sub/dir"


def test_local_stateful_model(tmp_path):
    backend = LocalBackend(str(tmp_path / "store"))  # durable: the group-commit pipe path too
    counter = itertools.count()
    assert run_stateful(lambda: (backend, f"run{next(counter)}"), max_examples=500) >= 500


# -- bad input: a clear error, and nothing on disk changes --------------------------------------

@pytest.fixture
def store(tmp_path):
    """A local backend at tmp_path/store with a small tree; tmp_path also holds a sibling
    directory, so a path that escaped the root would show up in the snapshot."""
    backend = LocalBackend(str(tmp_path / "store"))
    backend.pipe_file("file.txt", b"original")
    backend.pipe_file("dir/inner.txt", b"inner")
    backend.makedirs("empty", exist_ok=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_bytes(b"do not touch")
    return backend


BAD_PATHS = [
    pytest.param("../escape.txt", InvalidPath, "leaves the root", id="dotdot"),
    pytest.param("dir/../../escape.txt", InvalidPath, "leaves the root", id="dotdot-nested"),
    pytest.param("/../outside/victim.txt", InvalidPath, "leaves the root", id="dotdot-absolute"),
    pytest.param("dir/./../../outside/victim.txt", InvalidPath, "leaves the root", id="dot-dotdot"),
    pytest.param("a\x00b.txt", InvalidPath, "NUL", id="nul"),
    pytest.param("dir/\x00", InvalidPath, "NUL", id="nul-component"),
    pytest.param("x" * 256, NameTooLong, "255 bytes", id="component-256"),
    pytest.param("dir/" + "\u00e9" * 128, NameTooLong, "255 bytes", id="component-256-bytes-utf8"),
    pytest.param(b"bad-\xff\xfe.txt", InvalidPath, "UTF-8", id="invalid-utf8-bytes"),
    pytest.param("bad-\udcff.txt", InvalidPath, "UTF-8", id="lone-surrogate"),
]


def _write_via_open(fs, path):
    with fs.open(path, "wb") as f:
        f.write(b"new")


OPERATIONS = {
    "pipe_file": lambda fs, p: fs.pipe_file(p, b"new"),
    "open_wb": _write_via_open,
    "open_rb": lambda fs, p: fs.open(p, "rb"),
    "cat_file": lambda fs, p: fs.cat_file(p),
    "info": lambda fs, p: fs.info(p),
    "ls": lambda fs, p: fs.ls(p),
    "mkdir": lambda fs, p: fs.mkdir(p),
    "makedirs": lambda fs, p: fs.makedirs(p, exist_ok=True),
    "touch": lambda fs, p: fs.touch(p),
    "rm": lambda fs, p: fs.rm(p, recursive=True),
    "rm_file": lambda fs, p: fs.rm_file(p),
    "rmdir": lambda fs, p: fs.rmdir(p),
    "mv_from": lambda fs, p: fs.mv(p, "moved.txt"),
    "mv_to": lambda fs, p: fs.mv("file.txt", p),
    "cp_file_to": lambda fs, p: fs.cp_file("file.txt", p),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize(("bad_path", "error", "message"), BAD_PATHS)
def test_bad_paths_are_refused_and_change_nothing(store, tmp_path, operation, bad_path, error, message):
    before = snapshot_tree(tmp_path)
    with pytest.raises(error) as info:
        OPERATIONS[operation](store, bad_path)
    assert message in str(info.value)
    assert info.value.code in ("INVALID_PATH", "NAME_TOO_LONG")
    assert isinstance(info.value, (OSError, ValueError))
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize(("bad_path", "error", "message"), BAD_PATHS)
def test_bad_local_path_for_put_changes_nothing(store, tmp_path, bad_path, error, message):
    source = tmp_path / "outside" / "victim.txt"
    before = snapshot_tree(tmp_path)
    with pytest.raises(error):
        store.put_file(str(source), bad_path)
    assert snapshot_tree(tmp_path) == before


def test_dotdot_inside_the_root_is_fine(store):
    assert store.cat_file("dir/../file.txt") == b"original"
    store.pipe_file("dir/./sub/../x.txt", b"x")
    assert store.cat_file("dir/x.txt") == b"x"


def test_name_of_exactly_255_bytes_is_fine(store):
    name = "y" * 255
    store.pipe_file(name, b"long name")
    assert store.cat_file(name) == b"long name"


def test_valid_bytes_path_works(store):
    store.pipe_file(b"bytes-name.txt", b"ok")
    assert store.cat_file("bytes-name.txt") == b"ok"


BAD_TARGETS = [
    pytest.param(lambda fs: fs.pipe_file("dir", b"x"), IsADirectory, "directory", id="pipe-over-dir"),
    pytest.param(lambda fs: _write_via_open(fs, "dir"), IsADirectory, "directory", id="open-over-dir"),
    pytest.param(lambda fs: fs.pipe_file("empty", b"x"), IsADirectory, "directory", id="pipe-over-empty-dir"),
    pytest.param(lambda fs: fs.pipe_file("", b"x"), IsADirectory, "root", id="pipe-over-root"),
    pytest.param(lambda fs: fs.cp_file("file.txt", "dir"), IsADirectory, "directory", id="cp-over-dir"),
    pytest.param(lambda fs: fs.mkdir("file.txt"), AlreadyExists, "file exists", id="mkdir-over-file"),
    pytest.param(lambda fs: fs.makedirs("file.txt", exist_ok=True), AlreadyExists, "file exists",
                 id="makedirs-over-file"),
    pytest.param(lambda fs: fs.mkdir("file.txt/sub"), NotADirectory, "is a file", id="mkdir-below-file"),
    pytest.param(lambda fs: fs.pipe_file("file.txt/sub.txt", b"x"), NotADirectory, "is a file",
                 id="write-below-file"),
    pytest.param(lambda fs: fs.cat_file("missing.txt"), NotFound, "missing.txt", id="read-missing"),
    pytest.param(lambda fs: fs.open("missing.txt", "rb"), NotFound, "missing.txt", id="open-missing"),
    pytest.param(lambda fs: fs.cat_file("dir"), IsADirectory, "directory", id="read-a-directory"),
    pytest.param(lambda fs: fs.rm_file("missing.txt"), NotFound, "missing.txt", id="rm-missing"),
    pytest.param(lambda fs: fs.rm("dir"), OSError, "", id="rm-nonempty-dir"),
    pytest.param(lambda fs: fs.rmdir("dir"), OSError, "not empty", id="rmdir-nonempty"),
    pytest.param(lambda fs: fs.rmdir(""), InvalidPath, "root", id="rmdir-root"),
    pytest.param(lambda fs: fs.mv("missing.txt", "x.txt"), NotFound, "missing.txt", id="mv-missing"),
    pytest.param(lambda fs: fs.mv("dir", "dir/sub"), InvalidPath, "into itself", id="mv-into-itself"),
    pytest.param(lambda fs: fs.pipe_file("file.txt", b"x", mode="create"), FileExistsError, "exists",
                 id="create-existing"),
    pytest.param(lambda fs: fs.open("file.txt", "xb"), FileExistsError, "exists", id="open-x-existing"),
]


@pytest.mark.parametrize(("action", "error", "message"), BAD_TARGETS)
def test_bad_targets_give_clear_errors_and_change_nothing(store, tmp_path, action, error, message):
    before = snapshot_tree(tmp_path)
    with pytest.raises(error) as info:
        action(store)
    assert message in str(info.value)
    assert snapshot_tree(tmp_path) == before


# -- atomic writes ----------------------------------------------------------------------------------


def temp_files_on_disk(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]


def test_exception_inside_open_keeps_old_content(store, tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with store.open("file.txt", "wb") as f:
            f.write(b"half of the new conte")
            raise Boom
    assert store.cat_file("file.txt") == b"original"
    assert temp_files_on_disk(tmp_path / "store") == []
    with pytest.raises(Boom):
        with store.open("new.txt", "wb") as f:
            f.write(b"never")
            raise Boom
    assert not store.exists("new.txt")
    assert temp_files_on_disk(tmp_path / "store") == []


def test_write_in_progress_is_not_visible(store, tmp_path):
    f = store.open("file.txt", "wb")
    g = store.open("dir/brand-new.txt", "wb")
    f.write(b"replacement " * 1000)
    f.flush()
    g.write(b"new")
    g.flush()
    # The bytes are on disk in temporary files...
    assert len(temp_files_on_disk(tmp_path / "store")) == 1
    assert len(temp_files_on_disk(tmp_path / "store" / "dir")) == 1
    # ...but nobody sees them under the real names or in listings.
    assert store.cat_file("file.txt") == b"original"
    assert not store.exists("dir/brand-new.txt")
    assert sorted(store.ls("", detail=False)) == ["/dir", "/empty", "/file.txt"]
    assert store.find("") == ["/dir/inner.txt", "/file.txt"]
    assert not any(TEMP_PREFIX in p for p in store.find("", withdirs=True))
    f.close()
    g.close()
    assert store.cat_file("file.txt") == b"replacement " * 1000
    assert store.cat_file("dir/brand-new.txt") == b"new"
    assert temp_files_on_disk(tmp_path / "store") == []


WRITER = textwrap.dedent(
    """
    import sys
    from aiofs import LocalBackend
    fs = LocalBackend(sys.argv[1])
    mode = sys.argv[2]
    chunk = bytes([0x4E]) * 65536
    if mode == "stream":
        # One endless write: the file is never closed.
        with fs.open("victim.bin", "wb") as f:
            f.write(chunk)
            f.flush()
            print("writing", flush=True)
            while True:
                f.write(chunk)
                f.flush()
    else:
        # Endless whole-file replacements: version i is 256 KiB of byte i.
        i = 0
        while True:
            i = (i % 250) + 1
            fs.pipe_file("victim.bin", bytes([i]) * 262144)
            if i == 3:
                print("writing", flush=True)
    """
)


def _kill_writer_mid_write(store_root, mode, delay):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_root, mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline()
        assert line == b"writing\n", proc.stderr.read()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("existed", [True, False], ids=["over-old-file", "new-file"])
def test_kill_9_during_a_streaming_write(tmp_path, existed):
    store = LocalBackend(str(tmp_path / "store"))
    if existed:
        store.pipe_file("victim.bin", b"old content")
    _kill_writer_mid_write(store.root, "stream", delay=0.2)
    fresh = LocalBackend(store.root)
    if existed:
        assert fresh.cat_file("victim.bin") == b"old content"
    else:
        assert not fresh.exists("victim.bin")
    # The killed writer left its temporary file behind; listings never show it.
    assert temp_files_on_disk(tmp_path / "store")
    assert fresh.find("", withdirs=True) == (["/victim.bin"] if existed else [])
    assert all(TEMP_PREFIX not in e["name"] for e in fresh.ls("", detail=True))


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_kill_9_during_replacements_leaves_one_whole_version(tmp_path, delay):
    store = LocalBackend(str(tmp_path / "store"))
    _kill_writer_mid_write(store.root, "replace", delay=delay)
    content = LocalBackend(store.root).cat_file("victim.bin")
    assert len(content) == 262144
    assert len(set(content)) == 1, "a torn file: bytes of two versions"
    assert LocalBackend(store.root).find("", withdirs=True) == ["/victim.bin"]


def test_recursive_get_of_a_top_level_directory_into_an_existing_one(tmp_path):
    """fsspec's path mapping needs "/"-rooted names: `get src existing/` makes existing/src."""
    store = LocalBackend(str(tmp_path / "store"))
    store.pipe({"src/a.txt": b"1", "src/sub/b.txt": b"2"})
    out = tmp_path / "out"
    out.mkdir()
    for spelling in ("src", "/src"):
        store.get(spelling, str(out), recursive=True)
        assert (out / "src" / "sub" / "b.txt").read_bytes() == b"2"
        shutil.rmtree(out / "src")


def test_layer_refuses_invalid_utf8_bytes_paths(tmp_path, snapshot):
    layer = Layer(fs=LocalBackend(str(tmp_path / "store")))
    before = snapshot(tmp_path)
    with pytest.raises(InvalidPath):
        layer.pipe_file(b"bad\xff.txt", b"x")
    with pytest.raises(InvalidPath):
        layer.info(b"bad\xff.txt")
    assert snapshot(tmp_path) == before


def test_bulk_pipe_with_one_bad_entry_changes_nothing(tmp_path, snapshot):
    store = LocalBackend(str(tmp_path / "store"))
    store.pipe({"keep.txt": b"old", "dir/x": b"1"})
    before = snapshot(tmp_path)
    for bad in ("dir", "../escape", "keep.txt/under-a-file"):
        with pytest.raises(OSError):
            store.pipe({"keep.txt": b"new", "fresh.txt": b"n", bad: b"bad"})
        assert snapshot(tmp_path) == before, bad
    store.pipe({"keep.txt": b"new", "fresh.txt": b"n", "deep/er/f": b"d"})
    assert store.cat(["keep.txt", "fresh.txt", "deep/er/f"]) == {
        "/keep.txt": b"new", "/fresh.txt": b"n", "/deep/er/f": b"d"}


@pytest.mark.parametrize("make", [
    lambda root: LocalBackend(root),
    lambda root: Layer(fs=LocalBackend(root)),
], ids=["backend", "layer"])
def test_text_mode_write_failing_mid_way_keeps_the_old_content(tmp_path, make):
    fs = make(str(tmp_path / "store"))
    fs.pipe_file("notes.txt", b"old\n")
    with pytest.raises(RuntimeError):
        with fs.open("notes.txt", "w", encoding="utf-8") as f:
            f.write("new content, half written")
            raise RuntimeError("crash in the middle")
    assert fs.cat_file("notes.txt") == b"old\n"
    with fs.open("notes.txt", "w", encoding="utf-8") as f:
        f.write("new\n")
    assert fs.cat_file("notes.txt") == b"new\n"
    assert [n for n in os.listdir(tmp_path / "store") if n.startswith(TEMP_PREFIX)] == []
