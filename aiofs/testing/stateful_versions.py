"""A version-aware hypothesis model: the filesystem model plus each file's history.

:class:`VersionedFilesystemModel` extends :class:`~aiofs.testing.stateful.FilesystemModel`
for a stack with a Versioning layer. Besides the files it keeps, per path, the list of
versions the layer must hold (oldest first, with pins): every overwrite, delete and rename
over a file appends the replaced content, then unpinned versions beyond ``max_versions``
are dropped oldest first. So after N writes of one path ``versions()`` holds
``min(N - 1, max_versions)`` unpinned versions plus the pinned ones. Extra rules pin, unpin,
revert and restore; after every step ``versions()`` of every path with a history must match
(count, order, numbers increasing, pins) and each ``read_version`` must equal the model::

    from aiofs.testing.stateful_versions import run_versioned_stateful

    def test_model(tmp_path):
        fs = Versioning(fs=LocalBackend(str(tmp_path / "store")), max_versions=3)
        roots = iter(range(10**9))
        run_versioned_stateful(lambda: (fs, f"run{next(roots)}"), max_examples=500)
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from aiofs.layer import find_layer
from aiofs.testing.stateful import (
    FilesystemModel, _ancestors, _under, contents, file_paths, stateful_settings,
)

__all__ = ["VersionedFilesystemModel", "run_versioned_stateful"]


class VersionedFilesystemModel(FilesystemModel):
    """:class:`FilesystemModel` that also models the Versioning layer's history."""

    def __init__(self):
        super().__init__()
        from aiofs.layers.versioning import Versioning

        self.layer = find_layer(self.fs, Versioning)
        assert self.layer is not None, "the stack has no Versioning layer"
        self.max_versions = self.layer.max_versions
        # rel -> [{"data": bytes, "pinned": bool}], oldest first
        self.history: dict[str, list[dict]] = {}

    # -- the version rules ------------------------------------------------------------------

    def keep(self, rel: str) -> None:
        """The write about to happen replaces ``rel``: its content becomes a version."""
        if rel not in self.files:
            return
        versions = self.history.setdefault(rel, [])
        versions.append({"data": self.files[rel], "pinned": False})

    def prune(self, rel: str) -> None:
        versions = self.history.get(rel, [])
        unpinned = [v for v in versions if not v["pinned"]]
        extra = len(unpinned) - self.max_versions
        if extra > 0:
            dropped = {id(v) for v in unpinned[:extra]}
            self.history[rel] = [v for v in versions if id(v) not in dropped]

    def replaced(self, rel: str) -> None:
        """A write replaces ``rel``: keep its content, then prune (only when it existed)."""
        if rel in self.files:
            self.keep(rel)
            self.prune(rel)

    # -- writes (same effects on files as the base model, plus history) ---------------------

    @rule(rel=file_paths, data=contents, via_open=st.booleans())
    def write(self, rel, data, via_open):
        """Create or replace a file (``pipe_file`` or ``open('wb')``)."""
        self.replaced(rel)
        if via_open:
            with self.fs.open(self.path(rel), "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(self.path(rel), data)
        self.files[rel] = data
        self._note_parents(rel)

    @rule(items=st.dictionaries(file_paths, contents, min_size=2, max_size=3))
    def write_many(self, items):
        """One bulk ``pipe({path: bytes})`` call."""
        for rel in items:
            self.replaced(rel)
        self.fs.pipe({self.path(rel): data for rel, data in items.items()})
        for rel, data in items.items():
            self.files[rel] = data
            self._note_parents(rel)

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), data=contents)
    def overwrite(self, choice, data):
        """Replace an existing file's content."""
        rel = choice.draw(st.sampled_from(sorted(self.files)), label="file")
        self.replaced(rel)
        self.fs.pipe_file(self.path(rel), data)
        self.files[rel] = data

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), use_rm=st.booleans())
    def delete(self, choice, use_rm):
        """Delete an existing file: its content becomes a version."""
        rel = choice.draw(st.sampled_from(sorted(self.files)), label="file")
        self.replaced(rel)
        if use_rm:
            self.fs.rm(self.path(rel))
        else:
            self.fs.rm_file(self.path(rel))
        del self.files[rel]

    @precondition(lambda self: self.files)
    @rule(choice=st.data(), dest=file_paths)
    def rename(self, choice, dest):
        """Rename a file to a path that holds no file (no version: nothing is replaced)."""
        src = choice.draw(st.sampled_from(sorted(self.files)), label="source")
        if dest in self.files:
            return
        self.fs.mv(self.path(src), self.path(dest))
        self.files[dest] = self.files.pop(src)
        self._note_parents(dest)

    @precondition(lambda self: len(self.files) >= 2)
    @rule(choice=st.data())
    def rename_over_existing(self, choice):
        """Rename a file over another one: the replaced content becomes a version."""
        names = sorted(self.files)
        src = choice.draw(st.sampled_from(names), label="source")
        dest = choice.draw(st.sampled_from([n for n in names if n != src]), label="dest")
        self.replaced(dest)
        self.fs.mv(self.path(src), self.path(dest))
        self.files[dest] = self.files.pop(src)

    @precondition(lambda self: self.required_dirs())
    @rule(choice=st.data())
    def remove_tree(self, choice):
        """``rm(dir, recursive=True)``: every file below becomes a version."""
        rel = choice.draw(st.sampled_from(self.existing_dirs()), label="directory")
        for name in [k for k in self.files if _under(k, rel)]:
            self.replaced(name)
        self.fs.rm(self.path(rel), recursive=True)
        self.files = {k: v for k, v in self.files.items() if not _under(k, rel)}
        self.made_dirs = {d for d in self.made_dirs if not _under(d, rel)}
        self.maybe_dirs = {d for d in self.maybe_dirs if not _under(d, rel)}

    # (rename_directory is the base rule: a directory moves to a new name, no file is
    # replaced, and histories stay with the old paths)

    # -- version operations -------------------------------------------------------------------

    def _pick_version(self, choice, label="file"):
        rel = choice.draw(st.sampled_from(sorted(self.history)), label=label)
        versions = self.history[rel]
        index = choice.draw(st.integers(0, len(versions) - 1), label="version")
        listed = self.layer.versions(self.path(rel))  # newest first
        return rel, index, listed[len(versions) - 1 - index]

    @precondition(lambda self: any(self.history.values()))
    @rule(choice=st.data())
    def pin(self, choice):
        """Pin a version: kept beyond ``max_versions``."""
        self.history = {k: v for k, v in self.history.items() if v}
        rel, index, record = self._pick_version(choice)
        self.layer.pin(self.path(rel), record["version_id"])
        self.history[rel][index]["pinned"] = True

    @precondition(lambda self: any(v["pinned"] for vs in self.history.values() for v in vs))
    @rule(choice=st.data())
    def unpin(self, choice):
        """Unpin a version (pruned at the next write of that file if beyond the rules)."""
        pinned = sorted(k for k, vs in self.history.items() if any(v["pinned"] for v in vs))
        rel = choice.draw(st.sampled_from(pinned), label="file")
        versions = self.history[rel]
        index = choice.draw(st.sampled_from([i for i, v in enumerate(versions) if v["pinned"]]),
                            label="version")
        listed = self.layer.versions(self.path(rel))
        self.layer.unpin(self.path(rel), listed[len(versions) - 1 - index]["version_id"])
        versions[index]["pinned"] = False

    @precondition(lambda self: any(self.history.values()))
    @rule(choice=st.data())
    def revert(self, choice):
        """Revert to a version: the current content (if any) becomes a version."""
        self.history = {k: v for k, v in self.history.items() if v}
        rel, index, record = self._pick_version(choice)
        if rel not in self.files and self._blocked(rel):
            return
        data = self.history[rel][index]["data"]
        self.keep(rel)
        self.layer.revert(self.path(rel), record["version_id"])
        self.prune(rel)
        self.files[rel] = data
        self._note_parents(rel)

    @precondition(lambda self: any(v for k, v in self.history.items() if k not in self.files))
    @rule(choice=st.data())
    def restore(self, choice):
        """Restore a deleted file (its newest version)."""
        gone = sorted(k for k, v in self.history.items() if v and k not in self.files)
        rel = choice.draw(st.sampled_from(gone), label="deleted file")
        if self._blocked(rel):
            return
        self.layer.restore(self.path(rel))
        self.files[rel] = self.history[rel][-1]["data"]
        self._note_parents(rel)

    def _blocked(self, rel: str) -> bool:
        """True when a file of the model sits where a parent directory of ``rel`` must go."""
        return any(a in self.files for a in _ancestors(rel))

    # -- invariant ----------------------------------------------------------------------------

    @invariant()
    def versions_match_model(self):
        """``versions()`` and ``read_version`` of every path agree with the history."""
        for rel, expected in self.history.items():
            try:
                listed = self.layer.versions(self.path(rel))
            except FileNotFoundError:
                listed = []
            assert len(listed) == len(expected), (rel, len(listed), len(expected))
            numbers = [v["version_number"] for v in listed]
            assert numbers == sorted(numbers, reverse=True) and len(set(numbers)) == len(numbers)
            for record, model in zip(reversed(listed), expected):
                assert record["pinned"] == model["pinned"], (rel, record)
                assert record["size"] == len(model["data"]), (rel, record)
                data = self.layer.read_version(self.path(rel), record["version_id"])
                assert data == model["data"], (rel, record["version_number"])


def run_versioned_stateful(factory, max_examples: int = 500, step_count: int = 10,
                           **overrides) -> int:
    """Run the version-aware model against the stacks ``factory`` makes; examples run."""
    built = 0

    def counting_factory():
        nonlocal built
        built += 1
        return factory()

    machine = type("VersionedModel", (VersionedFilesystemModel,),
                   {"factory": staticmethod(counting_factory)})
    run_state_machine_as_test(machine, settings=stateful_settings(max_examples, step_count,
                                                                  **overrides))
    return built
