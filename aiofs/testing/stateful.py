"""A hypothesis stateful test that drives any fsspec filesystem against a dict model.

The model is ``{relative path: bytes}`` plus the directories the filesystem must (and
may) show. Rules write (one file, or several in one ``pipe``), overwrite, delete, rename
(also over an existing file and whole directories), mkdir, remove trees, list and read
ranges; after every step the files ``find`` returns, and their sizes and contents, must
match the model exactly::

    from aiofs.testing.stateful import run_stateful

    def test_my_layer_model(tmp_path):
        backend = MyLayer(fs=LocalBackend(str(tmp_path / "store")))
        roots = iter(range(10**9))
        run_stateful(lambda: (backend, f"run{next(roots)}"), max_examples=500)

The factory is called once per example and returns ``(fs, root)``: ``root`` must be an
empty (or absent) directory. The machine removes it when the example ends, so one store
can serve every example. File and directory names come from disjoint pools (``f0``...,
``d0``...), so no step ever puts a file where a directory is; the result is the same on a
POSIX disk, an object store and fsspec's memory filesystem.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable

from fsspec.spec import AbstractFileSystem
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aiofs.layer import EMPTY_DIRECTORIES, capabilities_of
from aiofs.testing.abstract import remove_tree_contents

__all__ = ["FilesystemModel", "make_state_machine", "run_stateful", "stateful_settings"]

Factory = Callable[[], "tuple[AbstractFileSystem, str]"]

FILE_NAMES = ("f0", "f1", "f2")
DIR_NAMES = ("d0", "d1")
DIRS = ("", "d0", "d1", "d0/d1", "d1/d0")

dir_paths = st.sampled_from(DIRS)
new_dir_paths = st.sampled_from(DIRS[1:])
file_paths = st.builds(
    lambda d, f: posixpath.join(d, f), dir_paths, st.sampled_from(FILE_NAMES)
)
contents = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 5000)),
)
offsets = st.one_of(st.none(), st.integers(-6000, 6000))


def _ancestors(rel: str) -> set[str]:
    out = set()
    parent = posixpath.dirname(rel)
    while parent:
        out.add(parent)
        parent = posixpath.dirname(parent)
    return out


def _under(rel: str, directory: str) -> bool:
    return rel == directory or rel.startswith(directory + "/")


class FilesystemModel(RuleBasedStateMachine):
    """Rules over ``self.fs`` below ``self.root``, checked against ``self.files``.

    ``files`` maps relative paths to content. ``made_dirs`` are directories created
    explicitly (kept only when the filesystem has the ``empty_directories`` capability);
    ``maybe_dirs`` are directories that may still exist (emptied parents on a POSIX disk
    stay, on an object store they vanish). Subclasses set ``factory``.
    """

    factory: Factory

    def __init_subclass__(cls, **kwargs):
        # Hypothesis keys its example database by the machine class's source, and every
        # machine made from this class finds the same source: one test's failing example
        # would be replayed (and, passing there, deleted) by every other model test, also
        # by a concurrent one (pytest-xdist). A key per test instead.
        super().__init_subclass__(**kwargs)
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rpartition(" (")[0]
        cls._hypothesis_internal_add_digest = f"{cls.__module__}.{cls.__qualname__}|{test}".encode()

    def __init__(self):
        super().__init__()
        self.fs, self.root = type(self).factory()
        self.files: dict[str, bytes] = {}
        self.made_dirs: set[str] = set()
        self.maybe_dirs: set[str] = set()
        self.keeps_empty_dirs = EMPTY_DIRECTORIES in capabilities_of(self.fs)

    # -- helpers ---------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def rel(self, name: str) -> str:
        base = self.fs._strip_protocol(self.root).strip("/") if self.root else ""
        name = self.fs._strip_protocol(name).strip("/")
        if name == base:
            return ""
        if base:
            assert name.startswith(base + "/"), f"{name!r} is outside the root {base!r}"
            name = name[len(base) + 1 :]
        return name

    def required_dirs(self) -> set[str]:
        dirs = set()
        for rel in self.files:
            dirs |= _ancestors(rel)
        if self.keeps_empty_dirs:
            dirs |= self.made_dirs
        return dirs

    def existing_dirs(self) -> list[str]:
        return sorted(self.required_dirs())

    def _note_parents(self, rel: str) -> None:
        self.maybe_dirs |= _ancestors(rel)

    # -- lifecycle -------------------------------------------------------------------------

    @initialize(seed_files=st.dictionaries(file_paths, contents, max_size=4))
    def start(self, seed_files):
        """Check the root is empty, then write a few files so short runs reach every rule."""
        if self.fs.exists(self.root):
            found = [n for n in self.fs.find(self.root, withdirs=True) if self.rel(n)]
            assert found == [], f"the root must start empty: {found}"
        for rel, data in seed_files.items():
            self.fs.pipe_file(self.path(rel), data)
            self.files[rel] = data
            self._note_parents(rel)

    def teardown(self):
        remove_tree_contents(self.fs, self.root)

    # -- writes ----------------------------------------------------------------------------

    @rule(rel=file_paths, data=contents, via_open=st.booleans())
    def write(self, rel, data, via_open):
        """Create or replace a file (``pipe_file`` or ``open('wb')``)."""
        if via_open:
            with self.fs.open(self.path(rel), "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(self.path(rel), data)
        self.files[rel] = data
        self._note_parents(rel)

    @rule(items=st.dictionaries(file_paths, contents, min_size=2, max_size=3))
    def write_many(self, items):
        """One bulk ``pipe({path: bytes})`` call (a group commit on some backends)."""
        self.fs.pipe({self.path(rel): data for rel, data in items.items()})
        for rel, data in items.items():
            self.files[rel] = data
            self._note_parents(rel)

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), data=contents)
    def overwrite(self, choice, data):
        """Replace an existing file's content."""
        rel = choice.draw(st.sampled_from(sorted(self.files)), label="file")
        self.fs.pipe_file(self.path(rel), data)
        self.files[rel] = data

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), use_rm=st.booleans())
    def delete(self, choice, use_rm):
        """Delete an existing file (``rm_file`` or ``rm``)."""
        rel = choice.draw(st.sampled_from(sorted(self.files)), label="file")
        if use_rm:
            self.fs.rm(self.path(rel))
        else:
            self.fs.rm_file(self.path(rel))
        del self.files[rel]

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), dest=file_paths)
    def rename(self, choice, dest):
        """Rename a file to a path that holds no file."""
        src = choice.draw(st.sampled_from(sorted(self.files)), label="source")
        if dest in self.files:
            return  # covered by rename_over_existing
        self.fs.mv(self.path(src), self.path(dest))
        self.files[dest] = self.files.pop(src)
        self._note_parents(dest)

    @precondition(lambda self: len(self.files) >= 2)
    @rule(choice=st.data())
    def rename_over_existing(self, choice):
        """Rename a file over another existing file, which it replaces."""
        names = sorted(self.files)
        src = choice.draw(st.sampled_from(names), label="source")
        dest = choice.draw(st.sampled_from([n for n in names if n != src]), label="dest")
        self.fs.mv(self.path(src), self.path(dest))
        self.files[dest] = self.files.pop(src)

    @rule(rel=new_dir_paths)
    def mkdir(self, rel):
        """Create a directory (and its parents); an existing one is fine."""
        self.fs.makedirs(self.path(rel), exist_ok=True)
        self.made_dirs |= {rel} | _ancestors(rel)
        self.maybe_dirs |= {rel} | _ancestors(rel)

    @precondition(lambda self: self.required_dirs())
    @rule(choice=st.data())
    def remove_tree(self, choice):
        """``rm(dir, recursive=True)``: the directory and everything below it go."""
        rel = choice.draw(st.sampled_from(self.existing_dirs()), label="directory")
        self.fs.rm(self.path(rel), recursive=True)
        self.files = {k: v for k, v in self.files.items() if not _under(k, rel)}
        self.made_dirs = {d for d in self.made_dirs if not _under(d, rel)}
        self.maybe_dirs = {d for d in self.maybe_dirs if not _under(d, rel)}

    @precondition(lambda self: self.required_dirs())
    @rule(choice=st.data(), dest=new_dir_paths)
    def rename_directory(self, choice, dest):
        """``mv(dir, new, recursive=True)`` to a directory name that does not exist."""
        src = choice.draw(st.sampled_from(self.existing_dirs()), label="directory")
        if _under(dest, src) or _under(src, dest) or self.fs.exists(self.path(dest)):
            return
        if any(_under(d, dest) for d in self.maybe_dirs | self.required_dirs()):
            return
        if not self.keeps_empty_dirs and not any(_under(k, src) for k in self.files):
            return  # an empty directory on an object store has nothing to move
        self.fs.mv(self.path(src), self.path(dest), recursive=True)

        def moved(rel):
            return dest + rel[len(src):] if _under(rel, src) else rel

        self.files = {moved(k): v for k, v in self.files.items()}
        self.made_dirs = {moved(d) for d in self.made_dirs}
        self.maybe_dirs = {moved(d) for d in self.maybe_dirs} | {dest} | _ancestors(dest)

    # -- reads -----------------------------------------------------------------------------

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), start=offsets, end=offsets)
    def read_range(self, choice, start, end):
        """``cat_file(start, end)`` equals Python slicing of the model's bytes."""
        rel = choice.draw(st.sampled_from(sorted(self.files)), label="file")
        got = self.fs.cat_file(self.path(rel), start=start, end=end)
        assert got == self.files[rel][start:end], (rel, start, end)

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), offset=st.integers(0, 6000), whence=st.sampled_from([0, 2]),
          length=st.integers(0, 6000))
    def read_seek(self, choice, offset, whence, length):
        """``open`` + ``seek`` (from start or end) + ``read``."""
        rel = choice.draw(st.sampled_from(sorted(self.files)), label="file")
        data = self.files[rel]
        with self.fs.open(self.path(rel), "rb") as f:
            if whence == 2:
                offset = min(offset, len(data))
                f.seek(-offset, 2)
                position = len(data) - offset
            else:
                f.seek(offset)
                position = offset
            assert f.tell() == position
            assert f.read(length) == data[position : position + length]

    @rule(rel=dir_paths)
    def list_directory(self, rel):
        """``ls`` of a directory shows exactly its files (and allowed subdirectories)."""
        directory = self.path(rel)
        required = self.required_dirs()
        if rel and rel not in required:
            return
        if not rel and not self.fs.exists(directory):  # a root nothing was written to yet
            assert not self.files and not required, "the root vanished"
            return
        entries = self.fs.ls(directory, detail=True)
        children_files = {k for k in self.files if posixpath.dirname(k) == rel}
        listed_files = {}
        listed_dirs = set()
        for entry in entries:
            name = self.rel(entry["name"])
            if entry["type"] == "directory":
                listed_dirs.add(name)
            else:
                listed_files[name] = entry["size"]
        assert set(listed_files) == children_files, (rel, listed_files, children_files)
        for name, size in listed_files.items():
            assert size == len(self.files[name]), name
        children_required = {d for d in required if posixpath.dirname(d) == rel}
        allowed = children_required | {d for d in self.maybe_dirs if posixpath.dirname(d) == rel}
        assert children_required <= listed_dirs <= allowed, (rel, listed_dirs)

    # -- invariant -------------------------------------------------------------------------

    @invariant()
    def find_matches_model(self):
        """``find`` returns exactly the model's files with their logical sizes."""
        if not self.files and not self.fs.exists(self.root):
            return
        self.fs.invalidate_cache()
        found = self.fs.find(self.root, withdirs=True, detail=True)
        files = {self.rel(k): v["size"] for k, v in found.items() if v["type"] != "directory"}
        dirs = {self.rel(k) for k, v in found.items() if v["type"] == "directory"} - {""}
        assert files == {k: len(v) for k, v in self.files.items()}, "find() diverged"
        required = self.required_dirs()
        assert required <= dirs, f"missing directories: {required - dirs}"
        assert dirs <= required | self.maybe_dirs, f"unexpected directories: {dirs}"

    def check_contents(self):
        for rel, data in self.files.items():
            assert self.fs.cat_file(self.path(rel)) == data, rel

    @invariant()
    def contents_match_model(self):
        """Every model file reads back exactly."""
        self.check_contents()


def stateful_settings(max_examples: int = 500, step_count: int = 10, **overrides) -> settings:
    """Hypothesis settings for the model test: short examples, no deadline."""
    return settings(
        max_examples=max_examples,
        stateful_step_count=step_count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        **overrides,
    )


def make_state_machine(
    factory: Factory, max_examples: int = 500, step_count: int = 10, name: str = "FilesystemModel"
) -> type[FilesystemModel]:
    """A :class:`FilesystemModel` subclass bound to ``factory``.

    Its ``TestCase`` attribute is a ``unittest.TestCase`` running ``max_examples``
    examples, so ``TestMine = make_state_machine(factory).TestCase`` in a test module runs
    it under pytest or unittest.
    """
    machine = type(name, (FilesystemModel,), {"factory": staticmethod(factory)})
    machine.TestCase.settings = stateful_settings(max_examples, step_count)
    return machine


def run_stateful(
    factory: Factory, max_examples: int = 500, step_count: int = 10, **overrides
) -> int:
    """Run the model test against the filesystems ``factory`` makes; raises on divergence.

    Returns how many examples ran (state machines built), so a test can assert that the
    requested number really ran. ``overrides`` go to hypothesis ``settings``.
    """
    built = 0

    def counting_factory():
        nonlocal built
        built += 1
        return factory()

    machine = make_state_machine(counting_factory, max_examples, step_count)
    run_state_machine_as_test(
        machine, settings=stateful_settings(max_examples, step_count, **overrides)
    )
    return built
