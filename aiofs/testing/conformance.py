"""aiofs conformance suite: what fsspec's abstract suite leaves out.

fsspec's shipped suite covers copy/get/put/open/pipe. This one covers the rest of the
contract every aiofs layer, backend and stack keeps (DESIGN.md "The layer contract"):
``ls``/``info``/``find``/``walk``/``glob``/``du``, ``rm`` and ``mv``, timestamps, hidden
internals under ``.aiofs/``, logical sizes and range reads. Use it like the abstract suite::

    from aiofs.testing.conformance import ConformanceSuite

    class TestMyLayerConformance(ConformanceSuite):
        def make_fs(self, tmp_path):
            return MyLayer(fs=LocalBackend(str(tmp_path / "store"))), ""

``make_fs`` returns ``(filesystem, root_path)`` where ``root_path`` is empty; the hidden
internals tests put ``.aiofs/`` directly below it, so for a whole store pass its root.
Instead of ``make_fs`` a subclass may override the ``fs`` and ``fs_path`` fixtures.
"""

from __future__ import annotations

import datetime
import posixpath
import random

import pytest
from fsspec.spec import AbstractFileSystem

from aiofs.errors import code_for
from aiofs.layer import EMPTY_DIRECTORIES, INTERNAL_DIR, Layer, capabilities_of, internal_access
from aiofs.testing.abstract import TargetFixtures

__all__ = ["ConformanceSuite", "relative_names"]

SECRET = b"internal layer state"


def _strip(path: str) -> str:
    return path.strip("/")


def relative_names(fs: AbstractFileSystem, root: str, names, keep_root: bool = False) -> list[str]:
    """Names returned by ``fs`` (``ls``/``find``/``glob``...) made relative to ``root``.

    Filesystems spell absolute paths differently (``"/x/a"`` on memory, ``"x/a"`` on a
    local backend); comparing relative names keeps the suite independent of that.
    ``root`` itself (which ``find(withdirs=True)`` includes) is dropped unless
    ``keep_root``, where it appears as ``""``. Fails the test if a name is not below ``root``.
    """
    base = _strip(fs._strip_protocol(root)) if root else ""
    out = []
    for name in names:
        name = _strip(fs._strip_protocol(name))
        if name == base:
            if keep_root:
                out.append("")
            continue
        if base:
            assert name.startswith(base + "/"), f"{name!r} is not below {base!r}"
            name = name[len(base) + 1 :]
        out.append(name)
    return sorted(out)


class ConformanceSuite(TargetFixtures):
    """ls/info/find/walk/glob/du/rm/mv, timestamps, hidden internals, logical sizes, ranges.

    Subclass it in a ``Test*`` class and override :meth:`make_fs` (or the ``fs`` and
    ``fs_path`` fixtures). Each test starts from an empty ``fs_path`` and builds its own
    files; directories that only exist empty are checked only when the filesystem claims
    the ``empty_directories`` capability.
    """

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def join(*parts: str) -> str:
        """Join store paths with ``/``."""
        return posixpath.join(*parts)

    def make_tree(self, fs, root) -> dict[str, bytes]:
        """Write a small tree below ``root``; return ``{relative path: content}``.

        ::

            a.txt  b.bin  dir/c.txt  dir/sub/d.txt (empty)  dir/sub/e.txt
        """
        files = {
            "a.txt": b"hello",
            "b.bin": bytes(range(256)) * 4,
            "dir/c.txt": b"c" * 10,
            "dir/sub/d.txt": b"",
            "dir/sub/e.txt": b"eeeeeee",
        }
        for rel, data in files.items():
            fs.pipe_file(self.join(root, rel), data)
        fs.invalidate_cache()
        return files

    def listing(self, fs, root, path="", **kwargs) -> list[str]:
        return relative_names(fs, root, fs.ls(self.join(root, path), detail=False, **kwargs))

    # -- ls ------------------------------------------------------------------------------

    def test_ls_names(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        assert self.listing(fs, fs_path) == ["a.txt", "b.bin", "dir"]
        assert self.listing(fs, fs_path, "dir") == ["dir/c.txt", "dir/sub"]
        assert self.listing(fs, fs_path, "dir/sub") == ["dir/sub/d.txt", "dir/sub/e.txt"]

    def test_ls_detail(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        entries = fs.ls(self.join(fs_path, "dir"), detail=True)
        by_name = {relative_names(fs, fs_path, [e["name"]])[0]: e for e in entries}
        assert sorted(by_name) == ["dir/c.txt", "dir/sub"]
        assert by_name["dir/c.txt"]["type"] == "file"
        assert by_name["dir/c.txt"]["size"] == len(files["dir/c.txt"])
        assert by_name["dir/sub"]["type"] == "directory"

    def test_ls_trailing_slash_is_the_same_directory(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        plain = self.listing(fs, fs_path, "dir")
        slashed = relative_names(
            fs, fs_path, fs.ls(self.join(fs_path, "dir") + "/", detail=False)
        )
        assert slashed == plain

    def test_ls_of_a_file_gives_that_file(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        entries = fs.ls(self.join(fs_path, "a.txt"), detail=True)
        assert len(entries) == 1
        assert relative_names(fs, fs_path, [entries[0]["name"]]) == ["a.txt"]
        assert entries[0]["type"] == "file" and entries[0]["size"] == 5
        names = fs.ls(self.join(fs_path, "a.txt"), detail=False)
        assert relative_names(fs, fs_path, names) == ["a.txt"]

    def test_ls_missing_raises(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        with pytest.raises(FileNotFoundError):
            fs.ls(self.join(fs_path, "nope"))
        with pytest.raises(FileNotFoundError):
            fs.ls(self.join(fs_path, "dir/nope/deeper"), detail=False)

    def test_empty_directory_is_listed(self, fs, fs_path):
        fs.pipe_file(self.join(fs_path, "keep.txt"), b"k")
        fs.makedirs(self.join(fs_path, "empty"), exist_ok=True)
        fs.invalidate_cache()
        if EMPTY_DIRECTORIES in capabilities_of(fs):
            assert self.listing(fs, fs_path) == ["empty", "keep.txt"]
            assert fs.isdir(self.join(fs_path, "empty"))
            assert fs.ls(self.join(fs_path, "empty"), detail=False) == []
        else:  # an object store: the directory may or may not show, the file must
            assert "keep.txt" in self.listing(fs, fs_path)

    # -- info / exists -------------------------------------------------------------------

    def test_info_file_and_directory(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        info = fs.info(self.join(fs_path, "b.bin"))
        assert info["type"] == "file"
        assert info["size"] == len(files["b.bin"])
        assert relative_names(fs, fs_path, [info["name"]]) == ["b.bin"]
        info = fs.info(self.join(fs_path, "dir/sub"))
        assert info["type"] == "directory"
        assert relative_names(fs, fs_path, [info["name"]]) == ["dir/sub"]

    def test_info_missing_raises(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        with pytest.raises(FileNotFoundError):
            fs.info(self.join(fs_path, "missing.txt"))
        with pytest.raises(FileNotFoundError):
            fs.info(self.join(fs_path, "a.txt/below-a-file"))

    def test_exists_isdir_isfile(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        a, d = self.join(fs_path, "a.txt"), self.join(fs_path, "dir")
        missing = self.join(fs_path, "missing")
        assert fs.exists(a) and fs.isfile(a) and not fs.isdir(a)
        assert fs.exists(d) and fs.isdir(d) and not fs.isfile(d)
        assert not fs.exists(missing) and not fs.isdir(missing) and not fs.isfile(missing)

    # -- find / walk / glob / du ---------------------------------------------------------

    def test_find_lists_files_recursively(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        assert relative_names(fs, fs_path, fs.find(fs_path)) == sorted(files)
        sub = relative_names(fs, fs_path, fs.find(self.join(fs_path, "dir")))
        assert sub == ["dir/c.txt", "dir/sub/d.txt", "dir/sub/e.txt"]

    def test_find_maxdepth(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        assert relative_names(fs, fs_path, fs.find(fs_path, maxdepth=1)) == ["a.txt", "b.bin"]
        two = relative_names(fs, fs_path, fs.find(fs_path, maxdepth=2))
        assert two == ["a.txt", "b.bin", "dir/c.txt"]

    def test_find_withdirs(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        found = relative_names(fs, fs_path, fs.find(fs_path, withdirs=True))
        assert found == sorted([*files, "dir", "dir/sub"])
        shallow = relative_names(fs, fs_path, fs.find(fs_path, maxdepth=1, withdirs=True))
        assert shallow == ["a.txt", "b.bin", "dir"]

    def test_find_detail(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        found = fs.find(fs_path, detail=True)
        assert isinstance(found, dict)
        assert relative_names(fs, fs_path, found) == sorted(files)
        for name, entry in found.items():
            rel = relative_names(fs, fs_path, [name])[0]
            assert entry["type"] == "file"
            assert entry["size"] == len(files[rel])

    def test_find_of_a_file_gives_that_file(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        assert relative_names(fs, fs_path, fs.find(self.join(fs_path, "a.txt"))) == ["a.txt"]

    def test_walk(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        walked = {}
        for dirpath, dirnames, filenames in fs.walk(fs_path):
            rel = relative_names(fs, fs_path, [dirpath], keep_root=True)[0]
            walked[rel] = (sorted(dirnames), sorted(filenames))
        assert walked == {
            "": (["dir"], ["a.txt", "b.bin"]),
            "dir": (["sub"], ["c.txt"]),
            "dir/sub": ([], ["d.txt", "e.txt"]),
        }

    def test_walk_maxdepth_and_detail(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        steps = list(fs.walk(fs_path, maxdepth=1))
        assert len(steps) == 1
        _, dirnames, filenames = steps[0]
        assert sorted(dirnames) == ["dir"] and sorted(filenames) == ["a.txt", "b.bin"]
        for dirpath, dirs, entries in fs.walk(self.join(fs_path, "dir"), detail=True):
            assert isinstance(dirs, dict) and isinstance(entries, dict)
            for name, entry in entries.items():
                rel = relative_names(fs, fs_path, [entry["name"]])[0]
                assert rel.endswith(name) and entry["size"] == len(files[rel])

    def test_glob(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        j = self.join
        assert relative_names(fs, fs_path, fs.glob(j(fs_path, "*.txt"))) == ["a.txt"]
        assert relative_names(fs, fs_path, fs.glob(j(fs_path, "*"))) == ["a.txt", "b.bin", "dir"]
        assert relative_names(fs, fs_path, fs.glob(j(fs_path, "dir/sub/?.txt"))) == [
            "dir/sub/d.txt", "dir/sub/e.txt"
        ]
        deep = relative_names(fs, fs_path, fs.glob(j(fs_path, "**/*.txt")))
        assert deep == ["a.txt", "dir/c.txt", "dir/sub/d.txt", "dir/sub/e.txt"]
        assert fs.glob(j(fs_path, "*.nothing")) == []

    def test_du(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        assert fs.du(fs_path) == sum(len(v) for v in files.values())
        assert fs.du(self.join(fs_path, "dir")) == 10 + 0 + 7
        per_path = fs.du(fs_path, total=False)
        got = {relative_names(fs, fs_path, [k])[0]: v for k, v in per_path.items()}
        assert got == {rel: len(data) for rel, data in files.items()}

    # -- rm --------------------------------------------------------------------------------

    def test_rm_file(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        fs.rm(self.join(fs_path, "a.txt"))
        fs.invalidate_cache()
        assert not fs.exists(self.join(fs_path, "a.txt"))
        assert relative_names(fs, fs_path, fs.find(fs_path)) == sorted(set(files) - {"a.txt"})
        fs.rm_file(self.join(fs_path, "dir/c.txt"))
        fs.invalidate_cache()
        assert not fs.exists(self.join(fs_path, "dir/c.txt"))
        assert fs.cat_file(self.join(fs_path, "dir/sub/e.txt")) == b"eeeeeee"

    def test_rm_recursive(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        fs.rm(self.join(fs_path, "dir"), recursive=True)
        fs.invalidate_cache()
        assert not fs.exists(self.join(fs_path, "dir"))
        assert not fs.exists(self.join(fs_path, "dir/sub/e.txt"))
        assert relative_names(fs, fs_path, fs.find(fs_path, withdirs=True)) == ["a.txt", "b.bin"]

    def test_rm_non_empty_directory_without_recursive_fails_and_deletes_nothing(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        with pytest.raises(OSError):
            fs.rm(self.join(fs_path, "dir"))
        fs.invalidate_cache()
        assert relative_names(fs, fs_path, fs.find(fs_path)) == sorted(files)
        for rel, data in files.items():
            assert fs.cat_file(self.join(fs_path, rel)) == data

    def test_rm_missing_raises(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        with pytest.raises(FileNotFoundError):
            fs.rm(self.join(fs_path, "missing.txt"))
        with pytest.raises(FileNotFoundError):
            fs.rm_file(self.join(fs_path, "missing.txt"))

    def test_rm_list(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        paths = [self.join(fs_path, "a.txt"), self.join(fs_path, "dir")]
        # fsspec hands lists of paths to _strip_protocol (rm, cat, expand_path...).
        assert fs._strip_protocol(paths) == [fs._strip_protocol(p) for p in paths]
        fs.rm([self.join(fs_path, "a.txt"), self.join(fs_path, "dir")], recursive=True)
        fs.invalidate_cache()
        assert relative_names(fs, fs_path, fs.find(fs_path, withdirs=True)) == ["b.bin"]

    # -- mv / cp ---------------------------------------------------------------------------

    def test_mv_file(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        fs.mv(self.join(fs_path, "a.txt"), self.join(fs_path, "renamed.txt"))
        fs.invalidate_cache()
        assert not fs.exists(self.join(fs_path, "a.txt"))
        assert fs.cat_file(self.join(fs_path, "renamed.txt")) == files["a.txt"]
        fs.mv(self.join(fs_path, "renamed.txt"), self.join(fs_path, "dir/sub/moved.txt"))
        fs.invalidate_cache()
        assert fs.cat_file(self.join(fs_path, "dir/sub/moved.txt")) == files["a.txt"]
        assert not fs.exists(self.join(fs_path, "renamed.txt"))

    def test_mv_over_existing_file_replaces_it(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        fs.mv(self.join(fs_path, "a.txt"), self.join(fs_path, "b.bin"))
        fs.invalidate_cache()
        assert not fs.exists(self.join(fs_path, "a.txt"))
        assert fs.cat_file(self.join(fs_path, "b.bin")) == files["a.txt"]
        assert fs.info(self.join(fs_path, "b.bin"))["size"] == len(files["a.txt"])

    def test_mv_directory(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        fs.mv(self.join(fs_path, "dir"), self.join(fs_path, "moved"), recursive=True)
        fs.invalidate_cache()
        assert not fs.exists(self.join(fs_path, "dir"))
        expected = {
            rel.replace("dir/", "moved/", 1) if rel.startswith("dir/") else rel: data
            for rel, data in files.items()
        }
        assert relative_names(fs, fs_path, fs.find(fs_path)) == sorted(expected)
        for rel, data in expected.items():
            assert fs.cat_file(self.join(fs_path, rel)) == data

    def test_mv_missing_raises(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        with pytest.raises(FileNotFoundError):
            fs.mv(self.join(fs_path, "missing.txt"), self.join(fs_path, "other.txt"))
        assert not fs.exists(self.join(fs_path, "other.txt"))

    def test_cp_file(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        fs.cp_file(self.join(fs_path, "b.bin"), self.join(fs_path, "dir/copy.bin"))
        fs.invalidate_cache()
        assert fs.cat_file(self.join(fs_path, "dir/copy.bin")) == files["b.bin"]
        assert fs.cat_file(self.join(fs_path, "b.bin")) == files["b.bin"]

    # -- timestamps ----------------------------------------------------------------------

    def test_created_and_modified_are_datetimes(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        now = datetime.datetime.now(datetime.timezone.utc)
        for stamp in (fs.created(self.join(fs_path, "a.txt")), fs.modified(self.join(fs_path, "a.txt"))):
            assert isinstance(stamp, datetime.datetime)
            assert stamp.tzinfo is not None, "timestamps must be timezone-aware"
            assert abs(now - stamp) < datetime.timedelta(hours=1)

    # -- hidden internals ----------------------------------------------------------------

    # Internal names a layer writes on its own when data passes through it (a dedup
    # store's packs and index files): left out when comparing what a test added.
    own_internal_prefixes: tuple[str, ...] = ()

    def make_internal_data(self, fs, root) -> None:
        """Write layer-internal data below ``root/.aiofs`` (as a layer would)."""
        with internal_access():
            fs.pipe_file(self.join(root, INTERNAL_DIR, "state.json"), SECRET)
            fs.pipe_file(self.join(root, INTERNAL_DIR, "deep", "blob.bin"), b"x" * 100)
            fs.invalidate_cache()
            # The internal data really is there: the hiding below is what hides it.
            assert fs.cat_file(self.join(root, INTERNAL_DIR, "state.json")) == SECRET
            assert INTERNAL_DIR in [n.rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)]

    def assert_internal_data_intact(self, fs, root) -> None:
        with internal_access():
            fs.invalidate_cache()
            assert fs.cat_file(self.join(root, INTERNAL_DIR, "state.json")) == SECRET
            assert fs.cat_file(self.join(root, INTERNAL_DIR, "deep", "blob.bin")) == b"x" * 100

    @staticmethod
    def assert_no_internal(names) -> None:
        leaked = [n for n in names if INTERNAL_DIR in str(n).split("/")]
        assert not leaked, f"internal paths leaked: {leaked}"

    def test_hidden_internals_not_listed(self, fs, fs_path):
        files = self.make_tree(fs, fs_path)
        self.make_internal_data(fs, fs_path)
        j = self.join
        assert self.listing(fs, fs_path) == ["a.txt", "b.bin", "dir"]
        self.assert_no_internal(e["name"] for e in fs.ls(fs_path, detail=True))
        found = fs.find(fs_path, withdirs=True)
        self.assert_no_internal(found)
        assert relative_names(fs, fs_path, fs.find(fs_path)) == sorted(files)
        self.assert_no_internal(fs.find(fs_path, detail=True))
        for dirpath, dirnames, filenames in fs.walk(fs_path):
            self.assert_no_internal([dirpath, *dirnames, *filenames])
        self.assert_no_internal(fs.glob(j(fs_path, "*")))
        self.assert_no_internal(fs.glob(j(fs_path, "**")))
        self.assert_no_internal(fs.glob(j(fs_path, ".*")))
        assert fs.glob(j(fs_path, INTERNAL_DIR, "*")) == []
        assert fs.du(fs_path) == sum(len(v) for v in files.values())
        self.assert_no_internal(fs.du(fs_path, total=False))

    def test_hidden_internals_do_not_exist_from_outside(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        self.make_internal_data(fs, fs_path)
        for rel in (INTERNAL_DIR, f"{INTERNAL_DIR}/state.json", f"{INTERNAL_DIR}/deep"):
            path = self.join(fs_path, rel)
            assert not fs.exists(path), path
            assert not fs.isfile(path) and not fs.isdir(path)
            with pytest.raises(FileNotFoundError):
                fs.info(path)
        with pytest.raises(FileNotFoundError):
            fs.ls(self.join(fs_path, INTERNAL_DIR))
        with pytest.raises(FileNotFoundError):
            fs.cat_file(self.join(fs_path, INTERNAL_DIR, "state.json"))
        with pytest.raises(FileNotFoundError):
            fs.open(self.join(fs_path, INTERNAL_DIR, "state.json"), "rb")
        assert fs.find(self.join(fs_path, INTERNAL_DIR)) == []

    def test_writes_to_internals_are_refused(self, fs, fs_path, tmp_path):
        self.make_tree(fs, fs_path)
        self.make_internal_data(fs, fs_path)
        j = self.join
        state = j(fs_path, INTERNAL_DIR, "state.json")
        fresh = j(fs_path, INTERNAL_DIR, "new.bin")
        local_file = tmp_path / "upload.bin"
        local_file.write_bytes(b"upload")

        def write_via_open():
            with fs.open(fresh, "wb") as f:
                f.write(b"nope")

        attempts = {
            "pipe_file": lambda: fs.pipe_file(state, b"overwritten"),
            "pipe": lambda: fs.pipe({fresh: b"nope"}),
            "open": write_via_open,
            "touch": lambda: fs.touch(fresh),
            "mkdir": lambda: fs.mkdir(j(fs_path, INTERNAL_DIR, "newdir")),
            "makedirs": lambda: fs.makedirs(j(fs_path, INTERNAL_DIR, "a", "b"), exist_ok=True),
            "rm_file": lambda: fs.rm_file(state),
            "rm": lambda: fs.rm(state),
            "rm_recursive": lambda: fs.rm(j(fs_path, INTERNAL_DIR), recursive=True),
            "rmdir": lambda: fs.rmdir(j(fs_path, INTERNAL_DIR, "deep")),
            "mv_into": lambda: fs.mv(j(fs_path, "a.txt"), fresh),
            "mv_out": lambda: fs.mv(state, j(fs_path, "stolen.json")),
            "cp_file_into": lambda: fs.cp_file(j(fs_path, "a.txt"), fresh),
            "put_file": lambda: fs.put_file(str(local_file), fresh),
        }
        for name, attempt in attempts.items():
            with pytest.raises(PermissionError) as info:
                attempt()
            assert code_for(info.value) == "RESERVED_PATH", name
            assert getattr(info.value, "code", None) == "RESERVED_PATH", name
        fs.invalidate_cache()
        self.assert_internal_data_intact(fs, fs_path)
        assert fs.cat_file(j(fs_path, "a.txt")) == b"hello"
        assert not fs.exists(j(fs_path, "stolen.json"))
        with internal_access():
            assert not fs.exists(fresh)
            assert not fs.exists(j(fs_path, INTERNAL_DIR, "newdir"))
            assert not fs.exists(j(fs_path, INTERNAL_DIR, "a"))

    def test_recursive_rm_of_root_keeps_internal_data(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        self.make_internal_data(fs, fs_path)
        fs.rm(fs_path, recursive=True)
        fs.invalidate_cache()
        assert not fs.exists(self.join(fs_path, "a.txt"))
        assert not fs.exists(self.join(fs_path, "dir"))
        if fs.exists(fs_path):
            assert relative_names(fs, fs_path, fs.find(fs_path, withdirs=True)) == []
        self.assert_internal_data_intact(fs, fs_path)

    def test_internal_access_reaches_internals(self, fs, fs_path):
        # A layer may keep data of its own at the store root (keys, indexes): compare what
        # this test adds, not the whole listing.
        with internal_access():
            before = set(relative_names(fs, fs_path, fs.find(fs_path)))
        self.make_internal_data(fs, fs_path)
        with internal_access():
            info = fs.info(self.join(fs_path, INTERNAL_DIR, "state.json"))
            assert info["size"] == len(SECRET)
            found = {n for n in set(relative_names(fs, fs_path, fs.find(fs_path))) - before
                     if not n.startswith(self.own_internal_prefixes)}
            assert sorted(found) == [f"{INTERNAL_DIR}/deep/blob.bin", f"{INTERNAL_DIR}/state.json"]

    # -- logical sizes -------------------------------------------------------------------

    @staticmethod
    def sample_payloads() -> dict[str, bytes]:
        """Contents of varied sizes and compressibility."""
        rng = random.Random(20240601)
        return {
            "empty": b"",
            "one": b"x",
            "text": b"the quick brown fox jumps over the lazy dog\n" * 1500,
            "random": rng.randbytes(70_001),
            "zeros": bytes(200_000),
            "mixed": rng.randbytes(30_000) + b"abc" * 40_000 + rng.randbytes(5),
        }

    def test_logical_sizes(self, fs, fs_path):
        payloads = self.sample_payloads()
        for i, (name, data) in enumerate(payloads.items()):
            path = self.join(fs_path, "sizes", name)
            if i % 2:
                fs.pipe_file(path, data)
            else:
                with fs.open(path, "wb") as f:
                    for offset in range(0, len(data), 8191):
                        f.write(data[offset : offset + 8191])
        fs.invalidate_cache()
        sizes_dir = self.join(fs_path, "sizes")
        listed = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["size"] for e in fs.ls(sizes_dir)}
        found = {k.rsplit("/", 1)[-1]: v["size"] for k, v in fs.find(sizes_dir, detail=True).items()}
        dus = {k.rsplit("/", 1)[-1]: v for k, v in fs.du(sizes_dir, total=False).items()}
        for name, data in payloads.items():
            path = self.join(sizes_dir, name)
            content = fs.cat_file(path)
            assert content == data, name
            assert listed[name] == len(content), f"ls size of {name}"
            assert fs.info(path)["size"] == len(content), f"info size of {name}"
            assert found[name] == len(content), f"find size of {name}"
            assert dus[name] == len(content), f"du size of {name}"
            assert fs.size(path) == len(content)
        assert fs.du(sizes_dir) == sum(len(d) for d in payloads.values())
        if isinstance(fs, Layer):
            # Logical sizes are computed on copies: the target's own entries (which may
            # live in its listings cache) still report what the target stores.
            # A fresh directory, so the target's first listing of it is taken here.
            target = fs.fs
            check_dir = self.join(fs_path, "entries")
            fs.pipe_file(self.join(check_dir, "text"), payloads["text"])
            before = {e["name"]: dict(e) for e in target.ls(check_dir, detail=True)}
            fs.ls(check_dir, detail=True)
            fs.find(check_dir, detail=True)
            fs.info(self.join(check_dir, "text"))
            after = {e["name"]: dict(e) for e in target.ls(check_dir, detail=True)}
            assert after == before, "the layer changed its target's ls/info entries"

    # -- range reads ---------------------------------------------------------------------

    RANGE_SIZE = 300_007
    RANGE_CASES = [
        (None, None), (0, 10), (None, 10), (10, None), (1000, 2000),
        (65_530, 65_545), (131_071, 131_073), (299_000, 300_007), (-100, None),
        (None, -100), (-200, -100), (-1, None), (-400_000, 10), (299_990, 400_000),
        (300_007, None), (400_000, 500_000), (500, 500), (600, 500), (-5, -10), (0, 0),
        (10, -300_000),
    ]

    def range_data(self) -> bytes:
        return random.Random(7).randbytes(self.RANGE_SIZE)

    def test_range_reads_cat_file(self, fs, fs_path):
        data = self.range_data()
        path = self.join(fs_path, "ranges.bin")
        fs.pipe_file(path, data)
        for start, end in self.RANGE_CASES:
            got = fs.cat_file(path, start=start, end=end)
            assert got == data[start:end], f"cat_file(start={start}, end={end})"
        assert fs.cat_file(path, start=500, end=500) == b""
        assert fs.cat_file(path, start=600, end=500) == b""
        assert fs.cat_file(path, start=self.RANGE_SIZE + 5) == b""

    def test_range_reads_open_seek(self, fs, fs_path):
        data = self.range_data()
        size = len(data)
        path = self.join(fs_path, "ranges.bin")
        fs.pipe_file(path, data)
        with fs.open(path, "rb") as f:
            assert f.read(5) == data[:5]
            f.seek(1000)
            assert f.read(100) == data[1000:1100]
            assert f.tell() == 1100
            f.seek(200_000)
            assert f.read(70_000) == data[200_000:270_000]
            f.seek(-50, 2)
            assert f.tell() == size - 50
            assert f.read() == data[-50:]
            f.seek(-100, 1)
            assert f.read(10) == data[size - 100 : size - 90]
            f.seek(3, 1)
            assert f.read(7) == data[size - 87 : size - 80]
            f.seek(0)
            assert f.read() == data
            f.seek(size + 10)
            assert f.read() == b""

    def test_read_missing_raises(self, fs, fs_path):
        self.make_tree(fs, fs_path)
        with pytest.raises(FileNotFoundError):
            fs.cat_file(self.join(fs_path, "missing.bin"))
        with pytest.raises(FileNotFoundError):
            fs.open(self.join(fs_path, "missing.bin"), "rb")
        with pytest.raises(FileNotFoundError):
            fs.cat_file(self.join(fs_path, "dir/missing/deeper.bin"), start=1, end=3)
