"""``LocalBackend``: a rooted directory on the local disk.

Contract:

* Paths are relative to ``root``: ``"/a/b"`` and ``"a/b"`` mean the same file, and names
  come back as ``"/a/b"`` (the root is ``"/"``), as on fsspec's memory filesystem. They are
  validated before any system call: NUL bytes, invalid UTF-8, components over 255 bytes and
  ``..`` that would leave the root raise errors from :mod:`aiofs.errors` and touch nothing.
  The guarantee is about path strings; symbolic links that somebody else places inside the
  root are followed like any file (aiofs itself never creates one).
* Writes are atomic: data goes to a temporary file in the destination directory
  (``.aiofs-tmp-*``, never listed), is flushed and fsynced, then renamed over the real name
  and the directory is fsynced. A crash leaves the old file or the new one, never half of
  one. Bulk ``pipe`` group-commits: all temporary files, one ``syncfs``, then the renames.
* Missing parent directories are created on write, like an object store (and fsspec's
  memory filesystem); a file in the way of a parent gives ``NOT_A_DIRECTORY``.
* ``.aiofs/`` holds layers' internal data: hidden and write-protected as in
  :mod:`aiofs.layer`.
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import io
import os
import posixpath
import secrets
import shutil
import stat as stat_module

import fsspec
from fsspec.spec import AbstractFileSystem

from aiofs.errors import (
    AlreadyExists, DirectoryNotEmpty, InvalidPath, IsADirectory, NameTooLong, NotADirectory,
    NotFound,
)
from aiofs.layer import (
    ATOMIC_WRITES, EMPTY_DIRECTORIES, INTERNAL_DIR, RANGE_READS, SERVER_SIDE_COPY, SafeTextWrites,
    WriteOnlyFile, has_glob, hide_internal_path, internals_visible, is_internal,
    refuse_internal_write,
)

TEMP_PREFIX = ".aiofs-tmp-"
MAX_NAME_BYTES = 255
_COPY_BLOCK = 1 << 20

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syncfs = _libc.syncfs
except (OSError, AttributeError):  # not Linux: fall back to fsync per file
    _syncfs = None


def validate_relative_path(path) -> str:
    """Normalise a root-relative path (``"a/b"``, ``""`` for the root) or raise.

    Raises ``INVALID_PATH`` for NUL bytes, invalid UTF-8 and paths that leave the root, and
    ``NAME_TOO_LONG`` for a component over 255 bytes.
    """
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPath(f"path is not valid UTF-8: {path!r}") from exc
    if "\x00" in path:
        raise InvalidPath(f"path contains a NUL byte: {path!r}")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath(f"path is not valid UTF-8: {path!r}") from exc
    rel = path.strip("/")
    if rel.startswith(("./", "../")) or "/." in rel or "//" in rel or rel in (".", ".."):
        rel = posixpath.normpath(rel)
        if rel == ".":
            rel = ""
        if rel == ".." or rel.startswith("../"):
            raise InvalidPath(f"path leaves the root: {path!r}")
    if len(encoded) > MAX_NAME_BYTES:
        for part in rel.split("/"):
            if len(part.encode("utf-8")) > MAX_NAME_BYTES:
                raise NameTooLong(f"path component over {MAX_NAME_BYTES} bytes: {part[:40]!r}...")
    return rel


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicWriteFile(WriteOnlyFile, io.BufferedIOBase):
    """A file being written: a temporary file renamed over the real name on ``close``.

    Leaving a ``with`` block through an exception, or calling :meth:`discard`, drops the
    temporary file and leaves the real name untouched.
    """

    SEEKABLE = True

    def __init__(self, final_path: str, mode: str, durable: bool, initial: str | None = None):
        super().__init__()
        self.final_path = final_path
        self.mode = mode
        self._durable = durable
        directory, name = os.path.split(final_path)
        self._temp_path = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(8)}-{name[:64]}")
        if initial is not None:  # append: start from a copy of the existing content
            shutil.copyfile(initial, self._temp_path)
            self._file = open(self._temp_path, "ab")
        else:
            self._file = open(self._temp_path, "xb")
        self._done = False

    def write(self, data) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Make the new content durable and put it under the real name."""
        if self._done:
            return
        self._done = True
        try:
            self._file.flush()
            if self._durable:
                os.fsync(self._file.fileno())
            self._file.close()
            if "x" in self.mode:
                os.link(self._temp_path, self.final_path)  # fails if the name appeared
                os.unlink(self._temp_path)
            else:
                os.rename(self._temp_path, self.final_path)
            if self._durable:
                _fsync_dir(os.path.dirname(self.final_path))
        except BaseException:
            self._drop_temp()
            raise
        finally:
            super().close()

    def discard(self) -> None:
        """Abandon the write: the real name keeps its old content (or stays absent)."""
        if self._done:
            return
        self._done = True
        self._drop_temp()
        super().close()

    def _drop_temp(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._temp_path)
        except FileNotFoundError:
            pass

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()


class LocalBackend(SafeTextWrites, AbstractFileSystem):
    """A rooted directory on the local disk with atomic, durable writes.

    ``LocalBackend(root, fsync=True)``. ``fsync=False`` keeps writes atomic (temp file and
    rename) but lets the OS decide when they reach the disk.
    """

    protocol = "aiofs-local"
    root_marker = "/"
    capabilities = frozenset({EMPTY_DIRECTORIES, SERVER_SIDE_COPY, ATOMIC_WRITES, RANGE_READS})

    def __init__(self, root: str, fsync: bool = True, create: bool = True, **kwargs):
        super().__init__(**kwargs)
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if create:
            os.makedirs(root, exist_ok=True)
        elif not os.path.isdir(root):
            raise NotFound(f"storage root does not exist: {root}", root)
        self.root = root
        self.durable = fsync

    def __repr__(self) -> str:
        return f"Local({self.root!r})"

    _aiofs_describe = True

    @property
    def fsid(self) -> str:
        return f"local:{self.root}"

    @classmethod
    def _relative(cls, path) -> str:
        """The validated root-relative form of a path: ``"a/b"``, ``""`` for the root."""
        path = fsspec.utils.stringify_path(path)
        if isinstance(path, bytes):  # decode (or refuse invalid UTF-8) before str methods
            path = validate_relative_path(path)
        if path.startswith("aiofs-local://"):
            path = path[len("aiofs-local://"):]
        return validate_relative_path(path)

    @classmethod
    def _strip_protocol(cls, path):
        # Names are "/a/b" (root "/"), as on fsspec's memory filesystem: fsspec's generic
        # copy/get/put path mapping needs a parent for top-level names.
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        rel = cls._relative(path)
        return "/" + rel if rel else ""  # the root strips to "", as on the memory filesystem

    @staticmethod
    def _get_kwargs_from_urls(path):
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return f"aiofs-local://{name.lstrip('/')}"

    def _full(self, path) -> str:
        rel = self._relative(path)
        return f"{self.root}/{rel}" if rel else self.root

    # -- metadata ------------------------------------------------------------------------

    def _entry(self, name: str, st: os.stat_result) -> dict:
        if stat_module.S_ISDIR(st.st_mode):
            kind = "directory"
        elif stat_module.S_ISREG(st.st_mode):
            kind = "file"
        else:
            kind = "other"
        return {
            "name": name,
            "size": st.st_size if kind == "file" else 0,
            "type": kind,
            "created": st.st_ctime,
            "mtime": st.st_mtime,
            "mode": st.st_mode,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "ino": st.st_ino,
            "nlink": st.st_nlink,
        }

    def info(self, path, **kwargs):
        rel = self._relative(path)
        hide_internal_path(rel)
        full = f"{self.root}/{rel}" if rel else self.root
        try:
            st = os.stat(full)
        except FileNotFoundError:
            raise NotFound(f"no such file or directory: {rel!r}", rel) from None
        except NotADirectoryError:
            raise NotFound(f"no such file or directory: {rel!r}", rel) from None
        return self._entry("/" + rel, st)

    def ls(self, path, detail=True, **kwargs):
        rel = self._relative(path)
        hide_internal_path(rel)
        full = f"{self.root}/{rel}" if rel else self.root
        prefix = f"/{rel}/" if rel else "/"
        show_internal = internals_visible()
        try:
            scanner = os.scandir(full)
        except FileNotFoundError:
            raise NotFound(f"no such file or directory: {rel!r}", rel) from None
        except NotADirectoryError:
            return [self.info(rel)] if detail else [rel]
        entries = []
        with scanner:
            for item in scanner:
                name = item.name
                if name.startswith(TEMP_PREFIX) or (name == ".aiofs" and not show_internal):
                    continue
                if not detail:
                    entries.append(prefix + name)
                    continue
                try:
                    st = item.stat()
                except FileNotFoundError:  # removed while we listed, or a dangling link
                    continue
                entries.append(self._entry(prefix + name, st))
        return entries

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """Every file below ``path`` (and directories with ``withdirs``), as fsspec's ``find``.

        One ``scandir`` per directory and no per-directory ``ls`` call: listings of whole
        stores (overview, gc, recounts) walk thousands of directories.
        """
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        rel = self._relative(path)
        name = "/" + rel if rel else ""
        out: dict[str, dict] = {}
        show_internal = internals_visible()
        if is_internal(rel) and not show_internal:
            return {} if detail else []
        full = f"{self.root}/{rel}" if rel else self.root
        try:
            top = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return {} if detail else []
        if not stat_module.S_ISDIR(top.st_mode):
            out[name] = self._entry(name, top)
        else:
            if withdirs and name:
                out[name] = self._entry(name, top)
            pending = [(full, name + "/", 1)]
            while pending:
                directory, prefix, depth = pending.pop()
                try:
                    scanner = os.scandir(directory)
                except (FileNotFoundError, NotADirectoryError):  # removed while we walked
                    continue
                with scanner:
                    for item in scanner:
                        child = item.name
                        if child.startswith(TEMP_PREFIX) or (child == INTERNAL_DIR and not show_internal):
                            continue
                        try:
                            st = item.stat()
                        except FileNotFoundError:
                            continue
                        entry = self._entry(prefix + child, st)
                        if entry["type"] == "directory":
                            if withdirs:
                                out[entry["name"]] = entry
                            if maxdepth is None or depth < maxdepth:
                                pending.append((f"{directory}/{child}", prefix + child + "/", depth + 1))
                        else:
                            out[entry["name"]] = entry
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def created(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["created"], tz=datetime.timezone.utc)

    def modified(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.timezone.utc)

    # -- reading ---------------------------------------------------------------------------

    def _open_for_reading(self, rel: str, full: str):
        try:
            return open(full, "rb")
        except FileNotFoundError:
            raise NotFound(f"no such file: {rel!r}", rel) from None
        except IsADirectoryError:
            raise IsADirectory(f"is a directory: {rel!r}", rel) from None
        except NotADirectoryError:
            raise NotFound(f"no such file: {rel!r}", rel) from None

    def cat_file(self, path, start=None, end=None, **kwargs):
        rel = self._relative(path)
        hide_internal_path(rel)
        full = f"{self.root}/{rel}" if rel else self.root
        with self._open_for_reading(rel, full) as f:
            if start is None and end is None:
                return f.read()
            size = os.fstat(f.fileno()).st_size
            start = 0 if start is None else (max(size + start, 0) if start < 0 else start)
            end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
            if end <= start:
                return b""
            f.seek(start)
            return f.read(end - start)

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        rel = self._relative(rpath)
        hide_internal_path(rel)
        full = self._full(rel)
        if os.path.isdir(full):
            os.makedirs(lpath, exist_ok=True)
            return
        with self._open_for_reading(rel, full) as src:
            size = os.fstat(src.fileno()).st_size
            callback.set_size(size)
            if outfile is not None:
                self._copy_stream(src, outfile, callback)
                return
            parent = os.path.dirname(os.fspath(lpath))
            if parent:  # like fsspec's get_file: the local parent is created on demand
                os.makedirs(parent, exist_ok=True)
            with open(lpath, "wb") as dst:
                self._copy_stream(src, dst, callback)

    @staticmethod
    def _copy_stream(src, dst, callback) -> None:
        while block := src.read(_COPY_BLOCK):
            dst.write(block)
            callback.relative_update(len(block))

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        rel = self._relative(path)
        full = f"{self.root}/{rel}" if rel else self.root
        if "r" in mode:
            hide_internal_path(rel)
            return self._open_for_reading(rel, full)
        refuse_internal_write(rel)
        self._prepare_write(rel, full, exclusive="x" in mode)
        initial = full if "a" in mode and os.path.isfile(full) else None
        return AtomicWriteFile(full, mode, self.durable, initial=initial)

    # -- writing ---------------------------------------------------------------------------

    def _prepare_write(self, rel: str, full: str, exclusive: bool = False) -> None:
        """Check the destination can take a file and create missing parents."""
        if not rel:
            raise IsADirectory("cannot write over the storage root", rel)
        try:
            st = os.stat(full)
        except FileNotFoundError:
            self._make_parents(rel)
            return
        except NotADirectoryError:
            raise NotADirectory(f"a parent of {rel!r} is a file", rel) from None
        if stat_module.S_ISDIR(st.st_mode):
            raise IsADirectory(f"cannot write over a directory: {rel!r}", rel)
        if exclusive:
            raise AlreadyExists(f"file exists: {rel!r}", rel)

    def _make_parents(self, rel: str) -> None:
        parent = posixpath.dirname(rel)
        if not parent:
            return
        try:
            os.makedirs(f"{self.root}/{parent}", exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectory(f"a parent of {rel!r} is a file", rel) from None

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        rel = self._relative(path)
        refuse_internal_write(rel)
        full = f"{self.root}/{rel}" if rel else self.root
        exclusive = mode == "create"
        self._prepare_write(rel, full, exclusive=exclusive)
        with AtomicWriteFile(full, "xb" if exclusive else "wb", self.durable) as f:
            f.write(value)

    def pipe(self, path, value=None, **kwargs):
        """Write many files with one group commit: temp files, one syncfs, then renames.

        Every destination is checked while staging, before any rename, so a bad entry
        (a directory in the way, an invalid path) fails the whole batch and changes nothing.
        """
        if isinstance(path, str):
            path = {path: value}
        if len(path) < 2 or not self.durable or _syncfs is None:
            for p, v in path.items():
                self.pipe_file(p, v, **kwargs)
            return
        batch = f"{TEMP_PREFIX}{secrets.token_hex(6)}"
        staged: list[tuple[str, str]] = []  # (temporary path, final path)
        try:
            for number, (p, data) in enumerate(path.items()):
                rel = self._relative(p)
                refuse_internal_write(rel)
                if not rel:
                    raise IsADirectory("cannot write over the storage root", rel)
                full = f"{self.root}/{rel}"
                directory, _, name = full.rpartition("/")
                temp = f"{directory}/{batch}{number:x}-{name[:64]}"
                self._stage(rel, full, temp, data)
                staged.append((temp, full))
            self._syncfs()
            for temp, full in staged:
                os.rename(temp, full)
            for directory in {full.rpartition("/")[0] for _, full in staged}:
                _fsync_dir(directory)
        except BaseException:
            for temp, _ in staged:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass  # already renamed: that file is complete and durable
            raise

    def _stage(self, rel: str, full: str, temp: str, data) -> None:
        """Write ``data`` to the temporary file ``temp`` for ``full`` (not yet durable)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o666)
        except FileNotFoundError:  # parent missing: create it, as a single write does
            self._make_parents(rel)
            fd = os.open(temp, flags, 0o666)
        except NotADirectoryError:
            raise NotADirectory(f"a parent of {rel!r} is a file", rel) from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            os.unlink(temp)
            raise
        os.close(fd)
        if os.path.isdir(full):
            os.unlink(temp)
            raise IsADirectory(f"cannot write over a directory: {rel!r}", rel)

    def _syncfs(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        rel = self._relative(rpath)
        refuse_internal_write(rel)
        full = self._full(rel)
        if os.path.isdir(lpath):
            self.makedirs(rel, exist_ok=True)
            return
        self._prepare_write(rel, full, exclusive=mode == "create")
        with open(lpath, "rb") as src:
            callback.set_size(os.fstat(src.fileno()).st_size)
            with AtomicWriteFile(full, "xb" if mode == "create" else "wb", self.durable) as dst:
                self._copy_stream(src, dst, callback)

    def cp_file(self, path1, path2, **kwargs):
        rel1, rel2 = self._relative(path1), self._relative(path2)
        hide_internal_path(rel1)
        refuse_internal_write(rel2)
        full1, full2 = self._full(rel1), self._full(rel2)
        if os.path.isdir(full1):
            self.makedirs(rel2, exist_ok=True)
            return
        self._prepare_write(rel2, full2)
        with self._open_for_reading(rel1, full1) as src:
            with AtomicWriteFile(full2, "wb", self.durable) as dst:
                shutil.copyfileobj(src, dst._file, _COPY_BLOCK)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        if isinstance(path1, list) or (isinstance(path1, str) and has_glob(path1)):
            return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        rel1, rel2 = self._relative(path1), self._relative(path2)
        refuse_internal_write(rel1)
        refuse_internal_write(rel2)
        if not rel1 or not rel2:
            raise InvalidPath("cannot move the storage root")
        if rel2 == rel1 or rel2.startswith(rel1 + "/"):
            raise InvalidPath(f"cannot move {rel1!r} into itself")
        full1, full2 = self._full(rel1), self._full(rel2)
        if not os.path.lexists(full1):
            raise NotFound(f"no such file or directory: {rel1!r}", rel1)
        if os.path.isdir(full2):  # like shutil.move and fsspec's local mv: move into it
            rel2 = f"{rel2}/{posixpath.basename(rel1)}"
            full2 = self._full(rel2)
        else:
            self._make_parents(rel2)
        try:
            os.rename(full1, full2)
        except IsADirectoryError:
            raise IsADirectory(f"cannot move a file over a directory: {rel2!r}", rel2) from None
        except NotADirectoryError:
            raise NotADirectory(f"cannot move a directory over a file: {rel2!r}", rel2) from None
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise DirectoryNotEmpty(f"destination directory not empty: {rel2!r}", rel2) from None
            raise
        if self.durable:
            _fsync_dir(os.path.dirname(full2))
            if os.path.dirname(full1) != os.path.dirname(full2):
                _fsync_dir(os.path.dirname(full1))

    # -- directories and deletion ------------------------------------------------------------

    def mkdir(self, path, create_parents=True, **kwargs):
        rel = self._relative(path)
        refuse_internal_write(rel)
        full = self._full(rel)
        if os.path.exists(full):
            kind = "directory" if os.path.isdir(full) else "file"
            raise AlreadyExists(f"a {kind} exists at {rel!r}", rel)
        try:
            if create_parents:
                os.makedirs(full)
            else:
                os.mkdir(full)
        except FileNotFoundError:
            raise NotFound(f"parent directory missing for {rel!r}", rel) from None
        except (NotADirectoryError, FileExistsError):
            raise NotADirectory(f"a parent of {rel!r} is a file", rel) from None

    def makedirs(self, path, exist_ok=False):
        rel = self._relative(path)
        refuse_internal_write(rel)
        full = self._full(rel)
        if os.path.isdir(full):
            if not exist_ok:
                raise AlreadyExists(f"directory exists: {rel!r}", rel)
            return
        if os.path.exists(full):
            raise AlreadyExists(f"a file exists at {rel!r}", rel)
        try:
            os.makedirs(full, exist_ok=exist_ok)
        except (NotADirectoryError, FileExistsError):
            raise NotADirectory(f"a parent of {rel!r} is a file", rel) from None

    def rmdir(self, path):
        rel = self._relative(path)
        refuse_internal_write(rel)
        if not rel:
            raise InvalidPath("cannot remove the storage root")
        try:
            os.rmdir(self._full(rel))
        except FileNotFoundError:
            raise NotFound(f"no such directory: {rel!r}", rel) from None
        except NotADirectoryError:
            raise NotADirectory(f"not a directory: {rel!r}", rel) from None
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise DirectoryNotEmpty(f"directory not empty: {rel!r}", rel) from None
            raise

    def rm_file(self, path):
        rel = self._relative(path)
        refuse_internal_write(rel)
        full = self._full(rel)
        try:
            os.unlink(full)
        except FileNotFoundError:
            raise NotFound(f"no such file: {rel!r}", rel) from None
        except IsADirectoryError:
            raise IsADirectory(f"is a directory: {rel!r}", rel) from None
        except PermissionError:
            if os.path.isdir(full):  # unlink of a directory gives EPERM on some systems
                raise IsADirectory(f"is a directory: {rel!r}", rel) from None
            raise

    def _rm(self, path):
        full = self._full(path)
        if os.path.isdir(full) and not os.path.islink(full):
            self.rmdir(path)
        else:
            self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        paths = path if isinstance(path, list) else [path]
        targets = []
        for p in paths:
            if isinstance(p, str) and has_glob(p):  # a bytes path is validated, not globbed
                targets.extend(self.expand_path(p, recursive=recursive, maxdepth=maxdepth))
                continue
            rel = self._relative(p)
            refuse_internal_write(rel)
            full = self._full(rel)
            if not os.path.lexists(full):
                raise NotFound(f"no such file or directory: {rel!r}", rel)
            targets.append(rel)
        for rel in sorted(set(targets), key=len, reverse=True):
            full = self._full(rel)
            if not os.path.lexists(full):
                continue  # already removed with a parent
            if os.path.isdir(full) and not os.path.islink(full):
                if recursive and maxdepth is None:
                    self._remove_tree(rel)
                elif recursive:
                    for child in self.expand_path(rel, recursive=True, maxdepth=maxdepth)[::-1]:
                        self._rm(child)
                else:
                    self.rmdir(rel)
            else:
                self.rm_file(rel)

    def _remove_tree(self, rel: str) -> None:
        """Remove a directory tree, but never the store root nor internal data in it."""
        full = self._full(rel)
        if rel and not is_internal(rel) and not os.path.isdir(os.path.join(full, ".aiofs")):
            shutil.rmtree(full)
            return
        for child in self.ls(rel, detail=False):
            child_full = self._full(child)
            if os.path.isdir(child_full) and not os.path.islink(child_full):
                self._remove_tree(child)
            else:
                os.unlink(child_full)
        if rel:
            if internals_visible() or not os.path.isdir(os.path.join(full, ".aiofs")):
                os.rmdir(full)

    def touch(self, path, truncate=True, **kwargs):
        rel = self._relative(path)
        refuse_internal_write(rel)
        full = self._full(rel)
        if truncate or not os.path.exists(full):
            self.pipe_file(rel, b"")
        else:
            os.utime(full, None)
