"""The mount's logic, independent of FUSE: open handles, write-back, caching policy.

:class:`VFS` turns POSIX-style calls (paths like ``/a/b``, integer handles, byte offsets)
into calls on any fsspec filesystem (the top of a stack). It knows no layer: quotas come
through a duck-typed ``statfs()`` method somewhere down the ``.fs`` chain.

* **Writes** go to a :class:`Buffer` per open *node* (one node per path, shared by every
  handle open on that path, so two handles see each other's writes) and reach the stack on
  ``flush`` (every ``close(2)``), ``fsync`` and ``release``, atomically as the stack writes:
  small files are buffered in memory and written with one ``pipe_file``; a file that grows
  past :data:`SMALL_FILE` by appending (a new or truncated file written sequentially)
  streams into the stack's own writer and is committed by closing it; anything else lives
  in an unlinked local temporary file written with ``put_file``. A file opened for writing
  without ``O_TRUNC`` is first copied from the stack into the buffer (streamed: files of
  several GiB never sit in memory). Once ``close(2)`` has written the file, the temporary
  file of the last handle is dropped at once, so its dirty pages never go to disk.
* **Reads** of a node with no pending writes go to the stack through one read handle per open
  handle: positional reads (``os.pread``) when the stack handed out a plain OS file object,
  else seek + read with a read-ahead window that doubles on sequential reads (up to
  ``read_ahead``). A read handle opened before the file changed through the mount is
  reopened.
* **Caches**: attributes and directory listings for ``attr_ttl`` / ``dir_ttl`` seconds,
  invalidated explicitly by every change made through this VFS (path and parent).
* **Errors** are raised as the stack raised them; ``aiofs.mount.fuse`` maps them to errno.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import stat
import tempfile
import threading
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fsspec.spec import AbstractFileSystem

from aiofs.layer import ATOMIC_WRITES, Layer, capabilities_of

__all__ = ["VFS", "FsError"]

log = logging.getLogger("aiofs.mount")

FILE_MODE = 0o644
DIR_MODE = 0o755
BLOCK = 4096
_COPY = 1 << 22
# Pending content up to this size stays in memory... ($AIOFS_MOUNT_SMALL_FILE: bytes, for
# tests that want every write of a mount to stream, with 0)
SMALL_FILE = int(os.environ.get("AIOFS_MOUNT_SMALL_FILE", 1 << 20))
MEMORY_BUDGET = 64 << 20   # ...while all in-memory pending content stays below this
# File objects whose descriptor holds exactly the bytes they read: os.pread on it is a read
# through that object, without its lock, buffer and per-call overhead.
_PLAIN_FILES = (io.BufferedReader, io.FileIO)


class FsError(OSError):
    """An error the VFS raises itself, carrying the errno to return."""

    def __init__(self, code: int, path: str = ""):
        super().__init__(code, os.strerror(code), path or None)


def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) or "/"


def _mtime(entry: dict) -> float:
    for key in ("mtime", "modified", "LastModified", "created"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
    return 0.0


class Buffer:
    """The pending content of one node, in one of three places.

    * **memory**: a ``bytearray`` while the content is at most :data:`SMALL_FILE` bytes
      (within the VFS-wide :data:`MEMORY_BUDGET`): small files need no temporary file;
    * **stream**: content that grew past that by appending only (``cp``, ``dd``, any
      sequential writer of a new or truncated file) goes straight into the stack's own
      writer (``fs.open(path, "wb")``), which makes it visible atomically on close. No local
      copy, no second pass. Only on stacks whose writes are atomic (``ATOMIC_WRITES``), so
      nothing of a half-written file is visible and a failed write is discarded;
    * **file**: anything else, in an unlinked temporary file in ``temp_dir``.

    A stream that meets a write before its end, a read or a shrinking truncate is first
    written to the stack (as a ``close(2)`` would) and copied back into a temporary file;
    appends past the end are filled with zeros.
    """

    def __init__(self, vfs: VFS, node: Node):
        self.vfs = vfs
        self.node = node
        self.mem = bytearray()
        self.file: Any = None          # the temporary file once spilled
        self.reserved = 0              # bytes of the memory budget held
        self.stream: Any = None        # the stack's writer while streaming
        self.stream_size = 0
        self.error: BaseException | None = None  # a failed stream: every later call fails
        # Set while a copy of the stack's file is loaded: an edit of a large existing file
        # (seek, write) must not stream the whole file to the stack first.
        self.loading = False

    @property
    def on_disk(self) -> bool:
        return self.file is not None

    @property
    def streaming(self) -> bool:
        return self.stream is not None

    def size(self) -> int:
        if self.stream is not None:
            return self.stream_size
        if self.file is not None:
            return os.fstat(self.file.fileno()).st_size
        return len(self.mem)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _fits(self, end: int) -> bool:
        """True when content of ``end`` bytes may stay in memory (reserves the budget)."""
        if end <= self.reserved:
            return True
        if end > SMALL_FILE or not self.vfs._reserve_memory(end - self.reserved):
            return False
        self.reserved = end
        return True

    def _free_memory(self) -> None:
        self.mem = bytearray()
        self.vfs._release_memory(self.reserved)
        self.reserved = 0

    def _spill(self) -> None:
        temp = self.vfs._temp()
        try:
            temp.write(self.mem)
            temp.flush()
        except BaseException:
            temp.close()
            raise
        self.file = temp
        self._free_memory()

    # -- streaming ---------------------------------------------------------------------

    def _may_stream(self) -> bool:
        return self.vfs.stream_writes and not self.node.unlinked and not self.loading

    def _start_stream(self) -> None:
        writer = self.vfs.fs.open(self.node.path, "wb")
        self.stream, self.stream_size = writer, 0
        try:
            if self.mem:
                writer.write(bytes(self.mem))
                self.stream_size = len(self.mem)
        except BaseException as exc:
            self._fail(exc)
            raise
        self._free_memory()

    def _stream_write(self, data, offset: int) -> None:
        try:
            while self.stream_size < offset:  # a gap: zeros, as a sparse file reads
                gap = min(offset - self.stream_size, _COPY)
                self.stream.write(bytes(gap))
                self.stream_size += gap
            self.stream.write(data)
            self.stream_size += len(data)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        """A stream write failed: discard it; the stack keeps what it had."""
        self.error = exc
        writer, self.stream = self.stream, None
        if writer is not None:
            discard = getattr(writer, "discard", None)
            try:
                if callable(discard):
                    discard()
            except Exception:  # noqa: BLE001 - the first error is the one reported
                pass

    def commit_stream(self) -> None:
        """Close the stream: the stack stores the file (atomically) or raises."""
        writer, self.stream = self.stream, None
        if self.node.unlinked:  # never recreate a removed name
            self.stream = writer
            self._fail(FsError(errno.ENOENT, self.node.path))
            return
        try:
            writer.close()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.node.generation += 1
            self.vfs.invalidate(self.node.path)

    def materialize(self) -> None:
        """Turn a stream into a temporary file: write it to the stack, copy it back."""
        if self.stream is None:
            return
        self.commit_stream()
        temp = self.vfs._temp()
        try:
            with self.vfs.fs.open(self.node.path, "rb") as src:
                while block := src.read(_COPY):
                    temp.write(block)
            temp.flush()
        except BaseException:
            temp.close()
            raise
        self.file = temp

    # -- the content -------------------------------------------------------------------

    def pread(self, size: int, offset: int) -> bytes:
        self._check()
        if self.stream is not None:
            self.materialize()
        if self.file is not None:
            return os.pread(self.file.fileno(), size, offset)
        return bytes(self.mem[offset:offset + size])

    def pwrite(self, data, offset: int) -> int:
        self._check()
        if self.stream is not None:
            if offset >= self.stream_size:
                self._stream_write(data, offset)
                return len(data)
            self.materialize()
        if self.file is None:
            if self._fits(max(offset + len(data), len(self.mem))):
                if offset > len(self.mem):
                    self.mem.extend(bytes(offset - len(self.mem)))
                self.mem[offset:offset + len(data)] = data
                return len(data)
            if offset == len(self.mem) and self._may_stream():
                self._start_stream()
                self._stream_write(data, offset)
                return len(data)
            self._spill()
        return os.pwrite(self.file.fileno(), data, offset)

    def truncate(self, length: int) -> None:
        self._check()
        if self.stream is not None:
            if length >= self.stream_size:
                self._stream_write(b"", length)
                return
            self.materialize()
        if self.file is None:
            if length <= len(self.mem):
                del self.mem[length:]
                return
            if self._fits(length):
                self.mem.extend(bytes(length - len(self.mem)))
                return
            self._spill()
        self.file.truncate(length)

    def upload(self, fs: AbstractFileSystem, path: str) -> bool:
        """Write the whole content to ``path`` on the stack (atomically, as the stack does).

        Returns ``True`` when the buffer is used up (a stream was committed): the stack now
        holds the content and the buffer holds nothing.
        """
        self._check()
        if self.stream is not None:
            self.commit_stream()
            return True
        if self.file is None:
            fs.pipe_file(path, bytes(self.mem))
            return False
        self.file.flush()
        fs.put_file(f"/proc/self/fd/{self.file.fileno()}", path)
        return False

    def close(self) -> None:
        """Drop the content (a stream not committed is discarded)."""
        if self.stream is not None:
            self._fail(FsError(errno.EBADF, self.node.path))
        if self.file is not None:
            self.file.close()
            self.file = None
        self._free_memory()


class Node:
    """The open state of one path: the write-back buffer, shared by its handles."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.RLock()
        self.handles = 0
        self.temp: Buffer | None = None   # the pending content once loaded
        self.dirty = False
        self.unlinked = False
        self.mtime = time.time()
        self.generation = 0               # bumped whenever the stack's file changes
        self.times: tuple[int, int] | None = None  # utimens to apply after the next upload

    @property
    def size(self) -> int:
        return self.temp.size()


class Handle:
    """One open file descriptor of the kernel."""

    def __init__(self, node: Node, flags: int):
        self.node = node
        self.flags = flags
        self.reader: Any = None        # read handle on the stack, opened lazily
        self.reader_fd: int | None = None  # its descriptor, when it is a plain OS file
        self.reader_generation = -1    # node.generation the reader was opened at
        self.old_readers: list = []    # replaced readers (a concurrent pread may use one)
        self.lock = threading.Lock()
        self.buf = b""
        self.buf_start = 0
        self.window = 128 * 1024
        self.next_offset = -1
        # (offset, future) of the next window, fetched in the background once reads are
        # sequential at the full read-ahead: the stack decodes it while the kernel takes
        # this one (layered stacks spend CPU per byte: decompression, hashes)
        self.prefetch: tuple[int, Any] | None = None


class VFS:
    """POSIX-style operations over any fsspec filesystem ``fs``."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        read_only: bool = False,
        attr_ttl: float = 1.0,
        dir_ttl: float = 1.0,
        read_ahead: int = 8 << 20,
        temp_dir: str | None = None,
        stream_writes: bool | None = None,
    ):
        self.fs = fs
        # Sequential writes past SMALL_FILE go straight to the stack's writer, where the
        # stack writes atomically (nothing half-written is ever visible).
        self.stream_writes = (ATOMIC_WRITES in capabilities_of(fs)) if stream_writes is None \
            else stream_writes
        self.read_only = read_only
        self.attr_ttl = attr_ttl
        self.dir_ttl = dir_ttl
        self.read_ahead = read_ahead
        self.temp_dir = temp_dir
        if temp_dir:
            os.makedirs(temp_dir, exist_ok=True)
        self._lock = threading.RLock()
        self._nodes: dict[str, Node] = {}
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._attrs: dict[str, tuple[float, dict | None]] = {}
        self._dirs: dict[str, tuple[float, dict[str, dict]]] = {}
        # Root names the stack opens by path but leaves out of listings (a capability
        # method, duck typed: any fsspec filesystem may be mounted)
        unlisted = getattr(fs, "unlisted_names", None)
        self._unlisted: frozenset[str] = frozenset(unlisted()) if callable(unlisted) else frozenset()
        self._passthrough: bool | None = None  # is the stack a pass-through over a local root?
        self._prefetcher: ThreadPoolExecutor | None = None
        # Bumped by every invalidation: a lookup that raced with a change is not cached.
        self._generation = 0
        self._memory_used = 0
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.started = time.time()

    # -- paths and caches ----------------------------------------------------------------

    def _stack_path(self, path: str) -> str:
        path = "/" + path.strip("/")
        return path

    def invalidate(self, path: str) -> None:
        """Forget cached attributes of ``path`` and the listing of its parent (and its own)."""
        path = self._stack_path(path)
        with self._lock:
            self._generation += 1
            self._attrs.pop(path, None)
            self._dirs.pop(path, None)
            self._dirs.pop(_parent(path), None)
        try:
            self.fs.invalidate_cache(path)
            self.fs.invalidate_cache(_parent(path))
        except Exception:  # noqa: BLE001 - a cache hint, never fatal
            pass

    def _invalidate_tree(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        with self._lock:
            self._generation += 1
            for key in [k for k in self._attrs if k.startswith(prefix)]:
                del self._attrs[key]
            for key in [k for k in self._dirs if k.startswith(prefix)]:
                del self._dirs[key]
        self.invalidate(path)

    def _check_writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)

    def _entry_attrs(self, entry: dict) -> dict:
        is_dir = entry.get("type") == "directory"
        size = 0 if is_dir else int(entry.get("size") or 0)
        mtime = _mtime(entry) or self.started
        return {
            "st_mode": (stat.S_IFDIR | DIR_MODE) if is_dir else (stat.S_IFREG | FILE_MODE),
            "st_nlink": 2 if is_dir else 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 1 << 17,
            "st_mtime": mtime, "st_ctime": mtime, "st_atime": mtime,
            "st_uid": self.uid, "st_gid": self.gid,
        }

    def _lookup(self, path: str) -> dict | None:
        """Attributes of ``path`` from the stack (cached); ``None`` when it does not exist."""
        now = time.monotonic()
        with self._lock:
            cached = self._attrs.get(path)
            if cached and cached[0] > now:
                return cached[1]
            parent_listing = self._dirs.get(_parent(path))
            if parent_listing and parent_listing[0] > now and path != "/":
                name = posixpath.basename(path)
                found = parent_listing[1].get(name)
                # a name the stack opens by path but never lists (.versions) is asked for
                if found is not None or name not in self._unlisted or _parent(path) != "/":
                    return found
            generation = self._generation
        if path == "/":
            attrs = self._entry_attrs({"type": "directory"})
        else:
            try:
                attrs = self._entry_attrs(self.fs.info(path))
            except FileNotFoundError:
                attrs = None
            except NotADirectoryError:
                attrs = None
        with self._lock:
            if generation == self._generation:
                self._attrs[path] = (time.monotonic() + self.attr_ttl, attrs)
        return attrs

    # -- metadata ------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict:
        path = self._stack_path(path)
        handle = self._handles.get(fh) if fh is not None else None
        node = handle.node if handle is not None else self._nodes.get(path)
        size = None
        if node is not None and node.temp is not None:
            with node.lock:  # a concurrent release may close the temporary file
                if node.temp is not None:
                    size = node.size
        if size is not None:
            return {
                "st_mode": stat.S_IFREG | FILE_MODE, "st_nlink": 0 if node.unlinked else 1,
                "st_size": size, "st_blocks": (size + 511) // 512, "st_blksize": 1 << 17,
                "st_mtime": node.mtime, "st_ctime": node.mtime, "st_atime": node.mtime,
                "st_uid": self.uid, "st_gid": self.gid,
            }
        attrs = self._lookup(path)
        if attrs is None:
            if node is not None:  # created, nothing written yet
                return self._entry_attrs({"type": "file", "size": 0, "mtime": node.mtime})
            raise FsError(errno.ENOENT, path)
        return attrs

    def readdir(self, path: str) -> list[tuple[str, dict]]:
        path = self._stack_path(path)
        now = time.monotonic()
        with self._lock:
            cached = self._dirs.get(path)
        if cached and cached[0] > now:
            listing = cached[1]
        else:
            attrs = self._lookup(path)
            if attrs is None:
                raise FsError(errno.ENOENT, path)
            if not stat.S_ISDIR(attrs["st_mode"]):
                raise FsError(errno.ENOTDIR, path)
            with self._lock:
                generation = self._generation
            listing = {}
            for entry in self.fs.ls(path, detail=True):
                name = posixpath.basename(entry["name"].rstrip("/"))
                if name:
                    listing[name] = self._entry_attrs(entry)
            with self._lock:
                if generation == self._generation:
                    self._dirs[path] = (time.monotonic() + self.dir_ttl, listing)
        result = dict(listing)
        with self._lock:  # files created but not yet flushed are listed too
            for node_path, node in self._nodes.items():
                if _parent(node_path) == path and not node.unlinked:
                    name = posixpath.basename(node_path)
                    if name not in result:
                        result[name] = self._entry_attrs({"type": "file", "size": 0})
        return sorted(result.items())

    def statfs(self) -> dict:
        """``statvfs`` fields: a quota's figures if the stack has one, else the disk's."""
        block = BLOCK
        current: Any = self.fs
        while current is not None:
            method = getattr(current, "statfs", None)
            if callable(method):
                try:
                    info = method()
                except TypeError:
                    info = None
                if isinstance(info, dict) and "total" in info:
                    total = int(info["total"])
                    free = int(info.get("free") or 0)
                    files_total = info.get("files_total")
                    files_free = info.get("files_free")
                    return {
                        "f_bsize": block, "f_frsize": block,
                        "f_blocks": total // block, "f_bfree": free // block,
                        "f_bavail": free // block,
                        "f_files": int(files_total) if files_total is not None else 1 << 32,
                        "f_ffree": int(files_free) if files_free is not None else 1 << 31,
                        "f_favail": int(files_free) if files_free is not None else 1 << 31,
                        "f_namemax": 255,
                    }
            root = getattr(current, "root", None)
            if isinstance(root, str) and os.path.isdir(root):
                st = os.statvfs(root)
                return {key: getattr(st, key) for key in (
                    "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                    "f_ffree", "f_favail")} | {"f_namemax": 255}
            current = getattr(current, "fs", None)
        return {"f_bsize": block, "f_frsize": block, "f_blocks": 1 << 28, "f_bfree": 1 << 28,
                "f_bavail": 1 << 28, "f_files": 1 << 32, "f_ffree": 1 << 31,
                "f_favail": 1 << 31, "f_namemax": 255}

    # -- namespace changes -----------------------------------------------------------------

    def mkdir(self, path: str, mode: int = DIR_MODE) -> None:
        self._check_writable()
        path = self._stack_path(path)
        if self._lookup(path) is not None:
            raise FsError(errno.EEXIST, path)
        parent = self._lookup(_parent(path))
        if parent is None:
            raise FsError(errno.ENOENT, path)
        if not stat.S_ISDIR(parent["st_mode"]):
            raise FsError(errno.ENOTDIR, path)
        try:
            self.fs.mkdir(path, create_parents=False)
        finally:
            self.invalidate(path)

    def rmdir(self, path: str) -> None:
        self._check_writable()
        path = self._stack_path(path)
        attrs = self._lookup(path)
        if attrs is None:
            raise FsError(errno.ENOENT, path)
        if not stat.S_ISDIR(attrs["st_mode"]):
            raise FsError(errno.ENOTDIR, path)
        if path == "/":
            raise FsError(errno.EBUSY, path)
        if self.readdir(path):
            raise FsError(errno.ENOTEMPTY, path)
        try:
            self.fs.rmdir(path)
        finally:
            self._invalidate_tree(path)

    def unlink(self, path: str) -> None:
        self._check_writable()
        path = self._stack_path(path)
        with self._lock:
            node = self._nodes.get(path)
        if node is not None:
            with node.lock:
                if node.temp is not None and node.temp.streaming:
                    node.temp.materialize()  # open handles keep the content...
                if node.temp is None and self._lookup(path) is not None:
                    self._load(node, truncate=False)  # ...in a buffer of their own
                node.unlinked = True
                node.dirty = False
            with self._lock:
                self._nodes.pop(path, None)
            attrs = self._lookup(path)
            if attrs is None:
                self.invalidate(path)
                return
        else:
            attrs = self._lookup(path)
            if attrs is None:
                raise FsError(errno.ENOENT, path)
        if stat.S_ISDIR(attrs["st_mode"]):
            raise FsError(errno.EISDIR, path)
        try:
            self.fs.rm_file(path)
        finally:
            self.invalidate(path)

    def rename(self, old: str, new: str) -> None:
        self._check_writable()
        old, new = self._stack_path(old), self._stack_path(new)
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise FsError(errno.EINVAL, new)
        with self._lock:
            node = self._nodes.get(old)
        if node is not None:  # pending writes reach the stack under the old name first
            with node.lock:
                self._upload(node)
        with self._lock:
            target = self._nodes.get(new)
        if target is not None:  # the replaced file's open handles keep its content
            with target.lock:
                if target.temp is not None and target.temp.streaming:
                    target.temp.materialize()
        src = self._lookup(old)
        if src is None:
            raise FsError(errno.ENOENT, old)
        dst = self._lookup(new)
        src_dir = stat.S_ISDIR(src["st_mode"])
        try:
            if dst is not None:
                dst_dir = stat.S_ISDIR(dst["st_mode"])
                if dst_dir and not src_dir:
                    raise FsError(errno.EISDIR, new)
                if src_dir and not dst_dir:
                    raise FsError(errno.ENOTDIR, new)
                if dst_dir:
                    if self.readdir(new):
                        raise FsError(errno.ENOTEMPTY, new)
                    self.fs.rmdir(new)
                    self.invalidate(new)
            parent = self._lookup(_parent(new))
            if parent is None:
                raise FsError(errno.ENOENT, new)
            self.fs.mv(old, new, recursive=src_dir)
        finally:
            self._invalidate_tree(old)
            self._invalidate_tree(new)
        with self._lock:  # open handles follow the file
            moved = {}
            for path, open_node in list(self._nodes.items()):
                if path == old or path.startswith(old.rstrip("/") + "/"):
                    del self._nodes[path]
                    open_node.path = new + path[len(old):]
                    moved[open_node.path] = open_node
            replaced = self._nodes.pop(new, None)
            if replaced is not None:
                replaced.unlinked = True
                replaced.dirty = False
            self._nodes.update(moved)

    def chmod(self, path: str, mode: int) -> None:
        """Accepted and ignored: files are always 0644 and directories 0755."""
        if self.getattr(path) is None:
            raise FsError(errno.ENOENT, path)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Accepted and ignored: everything belongs to the mounting user."""
        self.getattr(path)

    def _stored_file(self, path: str) -> str | None:
        """:meth:`stored_file`, with the walk down the stack done once per mount."""
        if self._passthrough is None:
            self._passthrough = self.stored_file("/") is not None
        return self.stored_file(path) if self._passthrough else None

    def stored_file(self, path: str) -> str | None:
        """The local file that *is* the logical file ``path``, or ``None``.

        Only for a pure pass-through stack (nothing but plain :class:`~aiofs.layer.Layer`
        instances) over a rooted local directory (``aiofs-local``), where the bytes and the
        name of a file are stored as they are. Any layer that changes bytes, names or keeps
        its own metadata (compression, versions...) makes this ``None``.
        """
        current: Any = self.fs
        while type(current) is Layer:
            current = current.fs
        root = getattr(current, "root", None)
        if getattr(current, "protocol", None) != "aiofs-local" or not isinstance(root, str):
            return None
        rel = self._stack_path(path).lstrip("/")
        return os.path.join(root, rel) if rel else root

    def utimens(self, path: str, times: tuple[int | None, int | None] | None = None) -> None:
        """Set access/modification times (nanoseconds; ``None`` = now, a ``None`` part = omit).

        Kept when the stack is a pure pass-through over a local directory (times go on the
        stored file; for a file with pending writes, right after they reach the stack).
        Ignored otherwise: such stacks keep their own modification times.
        """
        self._check_writable()
        path = self._stack_path(path)
        self.getattr(path)  # ENOENT
        if self.stored_file(path) is None:
            return
        with self._lock:
            node = self._nodes.get(path)
        if node is not None:
            with node.lock:
                if node.dirty and not node.unlinked:
                    node.times = times if times is not None else (time.time_ns(), time.time_ns())
                    if node.times[1] is not None:
                        node.mtime = node.times[1] / 1e9
                    return
        self._apply_times(path, times)

    def _apply_times(self, path: str, times) -> None:
        stored = self.stored_file(path)
        if stored is None:
            return
        try:
            if times is None:
                os.utime(stored)
            else:
                atime, mtime = times
                if atime is None or mtime is None:
                    st = os.stat(stored)
                    atime = st.st_atime_ns if atime is None else atime
                    mtime = st.st_mtime_ns if mtime is None else mtime
                os.utime(stored, ns=(atime, mtime))
        finally:
            with self._lock:
                node = self._nodes.get(path)
            if node is not None:
                node.times = None
            self.invalidate(path)

    # -- open files ------------------------------------------------------------------------

    def _node(self, path: str) -> Node:
        with self._lock:
            node = self._nodes.get(path)
            if node is None:
                node = self._nodes[path] = Node(path)
            node.handles += 1
            return node

    def _new_handle(self, node: Node, flags: int) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = Handle(node, flags)
            return fh

    def _temp(self):
        return tempfile.TemporaryFile(dir=self.temp_dir, prefix="aiofs-mount-")

    def _reserve_memory(self, nbytes: int) -> bool:
        with self._lock:
            if self._memory_used + nbytes > MEMORY_BUDGET:
                return False
            self._memory_used += nbytes
            return True

    def _release_memory(self, nbytes: int) -> None:
        if nbytes:
            with self._lock:
                self._memory_used -= nbytes

    def _load(self, node: Node, truncate: bool) -> None:
        """Give ``node`` its buffer: empty, or a streamed copy of the stack's file."""
        if node.temp is not None:
            return
        buffer = Buffer(self, node)
        buffer.loading = True
        try:
            if not truncate:
                try:
                    with self.fs.open(node.path, "rb") as src:  # streamed, never all in memory
                        offset = 0
                        while block := src.read(_COPY):
                            offset += buffer.pwrite(block, offset)
                except FileNotFoundError:
                    pass
        except BaseException:
            buffer.close()
            raise
        buffer.loading = False
        node.temp = buffer

    def _fresh_content(self, node: Node) -> None:
        """``O_CREAT``/``O_TRUNC``: the node's content becomes empty (caller holds the lock)."""
        if node.temp is not None and (node.temp.streaming or node.temp.error is not None):
            self._drop_buffer(node)  # an unfinished or failed stream is replaced, not kept
        if node.temp is None:
            self._load(node, truncate=True)
        else:
            node.temp.truncate(0)

    def _drop_buffer(self, node: Node) -> None:
        """Forget a clean node's buffer: reads go to the stack again (caller holds the lock)."""
        if node.temp is not None:
            node.temp.close()
            node.temp = None
            node.generation += 1

    def create(self, path: str, mode: int = FILE_MODE, flags: int = os.O_WRONLY) -> int:
        self._check_writable()
        path = self._stack_path(path)
        parent = self._lookup(_parent(path))
        if parent is None:
            raise FsError(errno.ENOENT, path)
        if not stat.S_ISDIR(parent["st_mode"]):
            raise FsError(errno.ENOTDIR, path)
        node = self._node(path)
        try:
            with node.lock:
                self._fresh_content(node)
                node.dirty = True  # the (empty) file reaches the stack on flush/close
                node.times = None
                node.mtime = time.time()
        except BaseException:
            self._drop_node_ref(node)
            raise
        return self._new_handle(node, flags)

    def open(self, path: str, flags: int) -> int:
        path = self._stack_path(path)
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC)
        if writing:
            self._check_writable()
        attrs = None
        with self._lock:
            known = path in self._nodes
        if not known:
            attrs = self._lookup(path)
            if attrs is None:
                raise FsError(errno.ENOENT, path)
            if stat.S_ISDIR(attrs["st_mode"]):
                raise FsError(errno.EISDIR, path)
        node = self._node(path)
        try:
            if flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
                with node.lock:
                    self._fresh_content(node)
                    node.dirty = True
                    node.times = None
                    node.mtime = time.time()
        except BaseException:
            self._drop_node_ref(node)
            raise
        return self._new_handle(node, flags)

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        node = handle.node
        if node.temp is not None:
            with node.lock:
                if node.temp is not None:
                    return node.temp.pread(size, offset)
        fd = handle.reader_fd
        if fd is not None and handle.reader_generation == node.generation:
            return os.pread(fd, size, offset)  # no lock: positional reads run in parallel
        with handle.lock:
            if handle.reader is not None and handle.reader_generation != node.generation:
                # The file changed through the mount since this reader was opened. A
                # concurrent pread may still use the old descriptor: closed at release.
                handle.old_readers.append(handle.reader)
                handle.reader = handle.reader_fd = None
                handle.buf, handle.buf_start, handle.next_offset = b"", 0, -1
                handle.prefetch = None
            if handle.reader is None:
                generation = node.generation
                stored = self._stored_file(node.path)
                # a pass-through stack: the stored file is the file, read it without fsspec
                handle.reader = open(stored, "rb", buffering=0) if stored is not None \
                    else self.fs.open(node.path, "rb")
                handle.reader_generation = generation
                if type(handle.reader) in _PLAIN_FILES:
                    handle.reader_fd = handle.reader.fileno()
            if handle.reader_fd is not None:
                return os.pread(handle.reader_fd, size, offset)
            buf_end = handle.buf_start + len(handle.buf)
            if handle.buf_start <= offset and offset + size <= buf_end:
                start = offset - handle.buf_start
                return handle.buf[start:start + size]
            sequential = offset == handle.next_offset
            if sequential:
                handle.window = min(handle.window * 2, self.read_ahead)
            else:
                handle.window = 128 * 1024
            want = max(size, handle.window)
            prefetched, handle.prefetch = handle.prefetch, None
            if sequential and prefetched is not None and prefetched[0] == offset:
                try:
                    data = prefetched[1].result()
                except Exception:  # noqa: BLE001 - the read below reports it, or succeeds
                    data = b""
                if data and len(data) >= min(size, self._known_size(node) - offset):
                    handle.buf, handle.buf_start = data, offset
                    handle.next_offset = offset + len(data)
                    self._prefetch_next(handle, node, offset + len(data))
                    return data[:size]
            handle.reader.seek(offset)
            data = handle.reader.read(want)
            handle.buf, handle.buf_start = data, offset
            handle.next_offset = offset + len(data)
            if sequential and handle.window >= self.read_ahead and len(data) >= want:
                self._prefetch_next(handle, node, offset + len(data))
            return data[:size]

    def _known_size(self, node: Node) -> int:
        attrs = self._lookup(node.path)
        return int(attrs["st_size"]) if attrs else 0

    def _prefetch_next(self, handle: Handle, node: Node, start: int) -> None:
        """Fetch ``[start, start + read_ahead)`` of the stack's file in the background."""
        if self._prefetcher is None:
            with self._lock:
                if self._prefetcher is None:
                    self._prefetcher = ThreadPoolExecutor(2, thread_name_prefix="aiofs-mount-prefetch")
        handle.prefetch = (start, self._prefetcher.submit(
            self.fs.cat_file, node.path, start, start + self.read_ahead))

    def write(self, fh: int, data: bytes, offset: int) -> int:
        self._check_writable()
        handle = self._handle(fh)
        node = handle.node
        with node.lock:
            if node.temp is None:
                self._load(node, truncate=False)
            if handle.flags & os.O_APPEND:
                offset = node.size
            written = node.temp.pwrite(data, offset)
            node.dirty = True
            node.times = None
            node.mtime = time.time()
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._check_writable()
        if fh is not None and fh in self._handles:
            node = self._handles[fh].node
            with node.lock:
                if node.temp is None:
                    self._load(node, truncate=length == 0)
                node.temp.truncate(length)
                node.dirty = True
                node.times = None
                node.mtime = time.time()
            return
        path = self._stack_path(path)
        attrs = self._lookup(path)
        with self._lock:
            open_node = self._nodes.get(path)
        if attrs is None and open_node is None:
            raise FsError(errno.ENOENT, path)
        if attrs is not None and stat.S_ISDIR(attrs["st_mode"]):
            raise FsError(errno.EISDIR, path)
        node = self._node(path)
        try:
            with node.lock:
                if node.temp is None:
                    self._load(node, truncate=length == 0)
                node.temp.truncate(length)
                node.dirty = True
                node.times = None
                node.mtime = time.time()
                self._upload(node)
        finally:
            self._drop_node_ref(node)

    def _upload(self, node: Node) -> None:
        """Write a dirty node's buffer to the stack (the caller holds ``node.lock``)."""
        if not node.dirty or node.temp is None or node.unlinked:
            return
        try:
            used_up = node.temp.upload(self.fs, node.path)
        finally:
            node.generation += 1
            self.invalidate(node.path)
        node.dirty = False
        if used_up:  # a committed stream: reads go to the stack, later writes reload
            self._drop_buffer(node)
        if node.times is not None:
            try:
                self._apply_times(node.path, node.times)
            except OSError as exc:  # the content is stored; only its times are not
                log.warning("could not set the times of %s: %s", node.path, exc)

    def flush(self, fh: int) -> None:
        """``close(2)``: write pending changes; the last handle then drops a temporary file."""
        node = self._handle(fh).node
        with node.lock:
            self._upload(node)
            # The stack has every byte: a temporary file closed now (before close(2)
            # returns) takes its dirty pages with it instead of leaving them to writeback
            # or to the caller's next sync(). Later writes (a dup'ed descriptor) reload.
            if node.handles == 1 and node.temp is not None and node.temp.on_disk \
                    and not node.dirty and not node.unlinked:
                self._drop_buffer(node)

    def fsync(self, fh: int, datasync: bool = False) -> None:
        node = self._handle(fh).node
        with node.lock:
            self._upload(node)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        for reader in [handle.reader, *handle.old_readers]:
            if reader is not None:
                try:
                    reader.close()
                except Exception:  # noqa: BLE001
                    pass
        node = handle.node
        try:
            with node.lock:
                self._upload(node)
        finally:
            self._drop_node_ref(node)

    def _drop_node_ref(self, node: Node) -> None:
        with self._lock:
            node.handles -= 1
            if node.handles > 0:
                return
            if self._nodes.get(node.path) is node:
                del self._nodes[node.path]
        with node.lock:
            if node.temp is not None:
                node.temp.close()
                node.temp = None

    def flush_all(self) -> list[tuple[str, BaseException]]:
        """Write every dirty open file to the stack (unmount, signals); returns failures."""
        failures = []
        with self._lock:
            nodes = list(self._nodes.values())
        for node in nodes:
            try:
                with node.lock:
                    self._upload(node)
            except Exception as exc:  # noqa: BLE001 - report, keep flushing the others
                failures.append((node.path, exc))
        return failures

    def close(self) -> list[tuple[str, BaseException]]:
        """Flush everything and drop all handles."""
        failures = self.flush_all()
        with self._lock:
            handles = list(self._handles)
        for fh in handles:
            try:
                self.release(fh)
            except Exception as exc:  # noqa: BLE001
                failures.append((str(fh), exc))
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=False, cancel_futures=True)
            self._prefetcher = None
        return failures
