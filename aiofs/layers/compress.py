"""``Compress``: transparent compression, zstd seekable frames by default.

Contract (DESIGN.md "The layer contract", format in ``docs/formats/compress.md``):

* Every file is stored under the same name as one object of the zstd seekable format
  (:mod:`aiofs.codecs.zstd_seekable`): independent frames of ``frame_size`` input bytes and
  a seek table, so ``cat_file(path, start, end)`` and seek + read fetch and decompress only
  the frames they touch. ``zstd -d`` restores the original. ``mode="gzip"`` writes one
  whole gzip stream instead (for tools that only know gzip): ``gzip -d`` restores it, but it
  is not seekable (a range read inflates from the start). Reads detect the format of each
  object, whatever the mode.
* Incompressible frames (JPEG, MP4, ZIP, random bytes) are found per frame, by compressing
  each frame and keeping it raw when that saves less than ``min_saving``; files under
  ``compression_threshold`` bytes are stored raw. Raw frames are still zstd frames.
* Every byte of an object is checked before data is returned: a flipped byte or a
  truncation anywhere gives ``INTEGRITY_ERROR`` naming the path, never wrong bytes.
  Decompression is bounded by the frame sizes the (verified) seek table declares.
* ``ls``/``info``/``find`` report logical sizes without reading objects: a local SQLite
  cache (WAL) maps (target id, path) to (stored size, target stamp, logical size). It is
  filled by this layer's writes and checked against the target's own entry (size and
  mtime/etag/inode...) on every use; a missing or stale entry costs one small ranged read
  of the object's tail (all misses of a listing in one bulk ``cat_ranges``), then is cached.
* Writes stream: ``open(path, "wb")`` compresses full frames in a thread pool with a
  bounded number of frames in flight and writes them to one target file opened ``"wb"``.
  A failed write (an exception inside ``with``, a failing target) discards the target
  file, so no partial object remains.
* Options are plain data: ``mode``, ``level``, ``frame_size``, ``compression_threshold``,
  ``min_saving``, ``threads``, ``cache_dir``, ``size_cache``.
"""

from __future__ import annotations

import collections
import io
import os
import posixpath
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
from fsspec.spec import AbstractBufferedFile

from aiofs.codecs import zstd_seekable as fmt
from aiofs.errors import IntegrityError, InvalidArgument, IsADirectory
from aiofs.layer import (
    RANGE_READS, Layer, has_glob, hide_internal_path, internals_visible, is_internal,
    WriteOnlyFile, refuse_internal_write, stamp_of, target_identity, visible_entries,
)

__all__ = ["Compress", "SizeCache", "stamp_of"]

MODES = ("zstd", "gzip")
DEFAULT_LEVELS = {"zstd": 3, "gzip": 6}
DEFAULT_FRAME_SIZE = 1 << 20
DEFAULT_THRESHOLD = 1024
DEFAULT_MIN_SAVING = 0.03
TAIL_GUESS = 16 << 10          # first tail read: the seek table of up to ~800 frames
SMALL_OBJECT = 64 << 10        # objects up to this size are read whole
TABLE_CACHE_ENTRIES = 256
FILE_FRAME_CACHE = 4           # decoded frames an open file keeps (sequential small reads)
COPY_CHUNK_FRAMES = 8          # get_file/put_file move this many frames per call

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2,
               "mb": 1000**2, "mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30}


def _parse_size(name: str, value) -> int:
    """An option in bytes: an int, or a string such as ``"1MiB"`` or ``"64 KB"``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a number of bytes, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        if number and unit in _SIZE_UNITS:
            try:
                return int(float(number) * _SIZE_UNITS[unit])
            except ValueError:
                pass
    raise InvalidArgument(f"{name} must be a number of bytes such as 1048576 or '1MiB', not {value!r}")


def _entry_name(entry: dict) -> str:
    name = entry["name"]
    return name.rstrip("/") or name


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


class SizeCache:
    """(target id, path) -> (stored size, stamp, logical size), in SQLite (WAL) or memory.

    ``path=None`` keeps the rows in this process only. SQLite problems (a read-only cache
    directory, a corrupt file) turn the cache into a process-local one: it is only a cache.
    The database starts with ``PRAGMA application_id`` = 0x41494643 ("AIFC") and
    ``user_version`` = 1.
    """

    APPLICATION_ID = 0x41494643
    SCHEMA_VERSION = 1
    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS sizes ("
        " fsid TEXT NOT NULL, parent TEXT NOT NULL, name TEXT NOT NULL,"
        " stored INTEGER NOT NULL, stamp TEXT NOT NULL, logical INTEGER NOT NULL,"
        " PRIMARY KEY (fsid, parent, name)) WITHOUT ROWID"
    )

    def __init__(self, path: str | None):
        self.path = path
        self._local = threading.local()
        self._memory: dict[tuple[str, str], tuple[int, str, int]] = {}
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._pid = os.getpid()

    # -- connections -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection | None:
        if self.path is None or self._broken:
            return None
        if self._pid != os.getpid():  # a forked child must not use its parent's connections
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            app, version = (conn.execute("PRAGMA application_id").fetchone()[0],
                            conn.execute("PRAGMA user_version").fetchone()[0])
            if (app, version) == (0, 0):
                conn.execute(f"PRAGMA application_id={self.APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
            elif (app, version) != (self.APPLICATION_ID, self.SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"{self.path} is not an aiofs size cache of version {self.SCHEMA_VERSION}")
            conn.execute(self._SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            self._broken = f"{type(exc).__name__}: {exc}"
            return None
        self._local.conn = conn
        return conn

    def _run(self, work: Callable[[sqlite3.Connection], Any], fallback: Callable[[], Any]):
        conn = self._connection()
        if conn is None:
            with self._lock:
                return fallback()
        try:
            return work(conn)
        except sqlite3.Error:
            with self._lock:  # busy beyond the timeout, disk trouble: act as a miss / no-op
                return fallback()

    # -- rows --------------------------------------------------------------------------------

    def get(self, fsid: str, names: Iterable[str]) -> dict[str, tuple[int, str, int]]:
        by_parent: dict[str, list[str]] = collections.defaultdict(list)
        for name in names:
            by_parent[posixpath.dirname(name)].append(name)

        def work(conn):
            out = {}
            for parent, group in by_parent.items():
                if len(group) > 32:  # a listing: the whole directory in one query
                    rows = conn.execute(
                        "SELECT name, stored, stamp, logical FROM sizes WHERE fsid=? AND parent=?",
                        (fsid, parent))
                    wanted = set(group)
                    out.update((r[0], r[1:]) for r in rows if r[0] in wanted)
                    continue
                for start in range(0, len(group), 500):
                    chunk = group[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT name, stored, stamp, logical FROM sizes WHERE fsid=? AND "
                        f"parent=? AND name IN ({marks})", (fsid, parent, *chunk))
                    out.update((r[0], r[1:]) for r in rows)
            return out

        def fallback():
            return {n: self._memory[(fsid, n)] for g in by_parent.values() for n in g
                    if (fsid, n) in self._memory}

        return self._run(work, fallback)

    def put_many(self, fsid: str, rows: list[tuple[str, int, str, int]]) -> None:
        if not rows:
            return

        def work(conn):
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT OR REPLACE INTO sizes (fsid, parent, name, stored, stamp, logical) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(fsid, posixpath.dirname(n), n, s, st, lg) for n, s, st, lg in rows])

        def fallback():
            for name, stored, stamp, logical in rows:
                self._memory[(fsid, name)] = (stored, stamp, logical)

        self._run(work, fallback)

    def forget(self, fsid: str, prefixes: Iterable[str]) -> None:
        """Drop the rows of these paths and of everything below them."""
        prefixes = [p.rstrip("/") for p in prefixes]

        def work(conn):
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for p in prefixes:
                    conn.execute(
                        "DELETE FROM sizes WHERE fsid=? AND (name=? OR name LIKE ? ESCAPE '\\')",
                        (fsid, p, _like_prefix(p)))

        def fallback():
            for key in [k for k in self._memory if k[0] == fsid and any(
                    k[1] == p or k[1].startswith(p + "/") for p in prefixes)]:
                del self._memory[key]

        self._run(work, fallback)

    def move(self, fsid: str, source: str, dest: str) -> None:
        """Rename the rows of ``source`` and everything below it to ``dest``."""
        source, dest = source.rstrip("/"), dest.rstrip("/")

        def renamed(name: str) -> str:
            return dest + name[len(source):]

        def work(conn):
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(
                    "SELECT name, stored, stamp, logical FROM sizes WHERE fsid=? AND "
                    "(name=? OR name LIKE ? ESCAPE '\\')",
                    (fsid, source, _like_prefix(source))).fetchall()
                conn.execute(
                    "DELETE FROM sizes WHERE fsid=? AND (name=? OR name LIKE ? ESCAPE '\\')",
                    (fsid, source, _like_prefix(source)))
                conn.executemany(
                    "INSERT OR REPLACE INTO sizes (fsid, parent, name, stored, stamp, logical) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(fsid, posixpath.dirname(renamed(n)), renamed(n), s, st, lg)
                     for n, s, st, lg in rows])

        def fallback():
            for key in [k for k in self._memory if k[0] == fsid and (
                    k[1] == source or k[1].startswith(source + "/"))]:
                self._memory[(fsid, renamed(key[1]))] = self._memory.pop(key)

        self._run(work, fallback)


# -- the layer ---------------------------------------------------------------------------------


class Compress(Layer):
    """Compress every file below this layer (zstd seekable frames, or gzip).

    ``Compress(fs=target, mode="zstd", level=None, frame_size=1 MiB,
    compression_threshold=1024, min_saving=0.03, threads=None, cache_dir=None,
    size_cache=True)``:

    * ``mode``: ``"zstd"`` (seekable, default) or ``"gzip"`` (whole stream, not seekable);
    * ``level``: compression level (default 3 for zstd, 6 for gzip);
    * ``frame_size``: input bytes per frame (1 KiB to 64 MiB; ``"1MiB"`` strings accepted);
    * ``compression_threshold``: files smaller than this are stored raw;
    * ``min_saving``: a frame is stored compressed only if that saves this fraction;
    * ``threads``: compression/decompression threads (default: CPU count);
    * ``cache_dir``: directory of the size cache (default: the user cache dir + ``/compress``);
    * ``size_cache``: ``False`` keeps logical sizes in this process only.
    """

    protocol = "aiofs-compress"

    def __init__(
        self,
        fs=None,
        target_protocol=None,
        target_options=None,
        mode: str = "zstd",
        level: int | None = None,
        frame_size: int | str = DEFAULT_FRAME_SIZE,
        compression_threshold: int | str = DEFAULT_THRESHOLD,
        min_saving: float = DEFAULT_MIN_SAVING,
        threads: int | None = None,
        cache_dir: str | None = None,
        size_cache: bool = True,
        **options: Any,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options,
                         **options)
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        if level is None:
            level = DEFAULT_LEVELS[mode]
        if isinstance(level, bool) or not isinstance(level, int):
            raise InvalidArgument(f"level must be an integer, not {level!r}")
        low, high = ((max(fmt.pyzstd.compressionLevel_values.min, -100),
                      fmt.pyzstd.compressionLevel_values.max) if mode == "zstd" else (0, 9))
        if not low <= level <= high:
            raise InvalidArgument(f"{mode} level must be from {low} to {high}, not {level}")
        self.level = level
        self.frame_size = _parse_size("frame_size", frame_size)
        if not fmt.MIN_FRAME_SIZE <= self.frame_size <= fmt.MAX_FRAME_SIZE:
            raise InvalidArgument(
                f"frame_size must be from {fmt.MIN_FRAME_SIZE} to {fmt.MAX_FRAME_SIZE} bytes, "
                f"not {self.frame_size}")
        self.compression_threshold = _parse_size("compression_threshold", compression_threshold)
        if not 0 <= self.compression_threshold <= self.frame_size:
            raise InvalidArgument(
                f"compression_threshold must be from 0 to frame_size ({self.frame_size}), "
                f"not {self.compression_threshold}")
        if isinstance(min_saving, bool) or not isinstance(min_saving, (int, float)) \
                or not 0.0 <= min_saving < 1.0:
            raise InvalidArgument(f"min_saving must be a fraction in [0, 1), not {min_saving!r}")
        self.min_saving = float(min_saving)
        if threads is None:
            threads = os.cpu_count() or 1
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidArgument(f"threads must be a positive integer, not {threads!r}")
        self.threads = threads
        if cache_dir is None:
            import platformdirs

            cache_dir = os.path.join(platformdirs.user_cache_dir("aiofs"), "compress")
        self.cache_dir = os.fspath(cache_dir)
        self.size_cache = bool(size_cache)
        self._sizes = SizeCache(os.path.join(self.cache_dir, "sizes.sqlite3")
                                if self.size_cache else None)
        self._tables: collections.OrderedDict[str, tuple[int, str, Any]] = collections.OrderedDict()
        self._tables_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._fsid: str | None = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        below = super().capabilities
        return below - {RANGE_READS} if self.mode == "gzip" else below

    @property
    def target_id(self) -> str:
        """The identity of the target in the size cache."""
        if self._fsid is None:
            self._fsid = target_identity(self.fs)
        return self._fsid

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # none yet, or a forked copy
            with self._pool_lock:
                if self._pool is None or self._pool_pid != os.getpid():
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="aiofs-compress")
                    self._pool_pid = os.getpid()
        return self._pool

    def _map(self, fn: Callable, items) -> list:
        """``map`` in the thread pool when that helps (results in order)."""
        items = list(items)
        if len(items) < 2 or self.threads < 2:
            return [fn(i) for i in items]
        return list(self._executor().map(fn, items))

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None and getattr(self, "_pool_pid", None) == os.getpid():
            pool.shutdown(wait=False)

    @staticmethod
    def _integrity(path, exc: BaseException) -> IntegrityError:
        return IntegrityError(f"{path}: stored object failed verification: {exc}", str(path))

    def _forget_table(self, names: Iterable[str]) -> None:
        with self._tables_lock:
            for name in names:
                name = name.rstrip("/")
                for key in [k for k in self._tables if k == name or k.startswith(name + "/")]:
                    del self._tables[key]

    # -- encoding ---------------------------------------------------------------------------

    def _encode_bytes(self, value, parallel: bool = True) -> bytes:
        """The stored object for ``value`` (frames encoded in the pool when large)."""
        if self.mode == "gzip":
            level = self.level if len(value) >= self.compression_threshold else 0
            return fmt.gzip_encode(value, level)
        many = parallel and len(value) > self.frame_size
        return fmt.encode_object(
            value, self.frame_size, self.level, self.compression_threshold, self.min_saving,
            map_=(lambda fn, it: self._map(fn, it)) if many else map)

    def _decode_blob(self, path, blob, parallel: bool = True) -> bytes:
        many = parallel and len(blob) > 2 * self.frame_size
        try:
            return fmt.decode_any(blob, (lambda fn, it: self._map(fn, it)) if many else map)
        except fmt.FormatError as exc:
            raise self._integrity(path, exc) from None

    # -- the size cache ---------------------------------------------------------------------

    def _record(self, entries_and_sizes: list[tuple[dict, int]]) -> None:
        rows = []
        for entry, logical in entries_and_sizes:
            stamp = stamp_of(entry)
            if stamp is not None and entry.get("type", "file") == "file":
                rows.append((_entry_name(entry), entry["size"], stamp, logical))
        self._sizes.put_many(self.target_id, rows)

    def _record_written(self, sizes: dict[str, int]) -> None:
        """After a write: the target's new entries, with their logical sizes, into the cache."""
        try:
            names = {self.fs._strip_protocol(p): n for p, n in sizes.items()}
            self._forget_table(names)
            found: list[tuple[dict, int]] = []
            by_parent: dict[str, list[str]] = collections.defaultdict(list)
            for name in names:
                by_parent[posixpath.dirname(name.rstrip("/"))].append(name)
            for parent, group in by_parent.items():
                if len(group) >= 8:  # a bulk write: one listing instead of one info per file
                    listed = {_entry_name(e): e for e in self.fs.ls(parent, detail=True)}
                    found += [(listed[n.rstrip("/")], names[n]) for n in group
                              if n.rstrip("/") in listed]
                else:
                    found += [(self.fs.info(n), names[n]) for n in group]
            self._record(found)
        except Exception:  # the write itself succeeded: a missing row only costs a read later
            pass

    def _logical_entries(self, entries: list) -> list:
        """Copies of target entries with logical sizes; one bulk tail read for cache misses."""
        out = list(entries)
        files = [(i, e) for i, e in enumerate(entries)
                 if e.get("type") == "file" and isinstance(e.get("size"), int)]
        if not files:
            return out
        names = [_entry_name(e) for _, e in files]
        rows = self._sizes.get(self.target_id, names)
        misses = []
        for (i, entry), name in zip(files, names):
            row = rows.get(name)
            stamp = stamp_of(entry)
            if row is not None and stamp is not None and row[0] == entry["size"] and row[1] == stamp:
                out[i] = {**entry, "size": row[2], "stored_size": entry["size"]}
            else:
                misses.append((i, entry, name))
        if misses:
            self._resolve_misses(out, misses)
        return out

    def _resolve_misses(self, out: list, misses: list) -> None:
        paths = [name for _, _, name in misses]
        sizes = [entry["size"] for _, entry, _ in misses]
        starts = [max(0, s - TAIL_GUESS) for s in sizes]
        try:
            tails = self.fs.cat_ranges(paths, starts, sizes, on_error="return")
        except Exception as exc:  # a target without cat_ranges semantics: one by one
            tails = [exc] * len(paths)
        learned = []
        for (i, entry, name), stored, tail in zip(misses, sizes, tails):
            try:
                if isinstance(tail, BaseException):
                    tail = self.fs.cat_file(name, start=max(0, stored - TAIL_GUESS), end=stored)
                logical = self._logical_from_tail(name, stored, tail)
            except fmt.FormatError as exc:
                out[i] = {**entry, "stored_size": stored,
                          "integrity_error": str(self._integrity(name, exc))}
                continue
            except Exception as exc:  # vanished or unreadable: keep the entry, flag it
                out[i] = {**entry, "stored_size": stored, "integrity_error": f"unreadable: {exc}"}
                continue
            out[i] = {**entry, "size": logical, "stored_size": stored}
            learned.append((entry, logical))
        self._record(learned)

    def _logical_from_tail(self, name: str, stored: int, tail) -> int:
        if len(tail) != min(stored, TAIL_GUESS):
            raise fmt.FormatError("object changed while reading (size differs)")
        kind = fmt.detect_format(tail)
        if kind == "gzip":
            return fmt.parse_gzip_trailer(tail, stored).logical_size
        need = fmt.tail_length(fmt.footer_entries(tail, stored))
        if need > len(tail):
            tail = self.fs.cat_file(name, start=stored - need, end=stored)
        return fmt.parse_tail(tail, stored).logical_size

    # -- metadata of one object (seek table or gzip trailer) --------------------------------

    def _target_file_entry(self, path) -> dict:
        entry = self.fs.info(path)
        if entry.get("type") == "directory":
            raise IsADirectory(f"is a directory: {path!r}", str(path))
        return entry

    def _meta(self, path, entry: dict):
        """The verified seek table (zstd) or trailer (gzip) of the object ``entry`` describes."""
        name, stored, stamp = _entry_name(entry), entry["size"], stamp_of(entry)
        with self._tables_lock:
            cached = self._tables.get(name)
            if cached is not None and stamp is not None and cached[:2] == (stored, stamp):
                self._tables.move_to_end(name)
                return cached[2]
        try:
            meta = self._load_meta(name, stored)
        except fmt.FormatError as exc:
            raise self._integrity(path, exc) from None
        if stamp is not None:
            with self._tables_lock:
                self._tables[name] = (stored, stamp, meta)
                while len(self._tables) > TABLE_CACHE_ENTRIES:
                    self._tables.popitem(last=False)
            self._record([(entry, meta.logical_size)])
        return meta

    def _load_meta(self, name: str, stored: int):
        if stored <= SMALL_OBJECT:
            blob = self.fs.cat_file(name)
            if len(blob) != stored:
                raise fmt.FormatError("object changed while reading (size differs)")
            kind = fmt.detect_format(blob) if stored >= 4 else "zstd"
            return fmt.parse_object(blob) if kind == "zstd" else fmt.parse_gzip_trailer(blob, stored)
        ranges = self.fs.cat_ranges([name, name], [0, max(0, stored - TAIL_GUESS)],
                                    [fmt.HEADER_SIZE, stored], on_error="return")
        for piece in ranges:
            if isinstance(piece, BaseException):
                raise piece
        header, tail = ranges
        if len(tail) != min(stored, TAIL_GUESS):
            raise fmt.FormatError("object changed while reading (size differs)")
        if fmt.detect_format(tail) == "gzip":
            return fmt.parse_gzip_trailer(tail, stored)
        need = fmt.tail_length(fmt.footer_entries(tail, stored))
        if need > len(tail):
            tail = self.fs.cat_file(name, start=stored - need, end=stored)
            if len(tail) != need:
                raise fmt.FormatError("object changed while reading (size differs)")
        table = fmt.parse_tail(tail, stored)
        table.verify_header(header)
        return table

    # -- listing and metadata ---------------------------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        hide_internal_path(path)
        entries = visible_entries(self.fs.ls(path, detail=detail, **kwargs), detail)
        return self._logical_entries(entries) if detail else entries

    def info(self, path, **kwargs):
        hide_internal_path(path)
        return self._logical_entries([self.fs.info(path, **kwargs)])[0]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        if is_internal(path) and not internals_visible():
            return {} if detail else []
        found = self.fs.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        show_internal = internals_visible()
        items = [(k, v) for k, v in found.items() if show_internal or not is_internal(k)]
        if not detail:
            return sorted(k for k, _ in items)
        logical = self._logical_entries([v for _, v in items])
        return {k: entry for (k, _), entry in zip(items, logical)}

    def exists(self, path, **kwargs):
        if is_internal(path) and not internals_visible():
            return False
        try:
            return self.fs.exists(path, **kwargs)
        except Exception:
            return False

    def isdir(self, path):
        if is_internal(path) and not internals_visible():
            return False
        return self.fs.isdir(path)

    def isfile(self, path):
        if is_internal(path) and not internals_visible():
            return False
        return self.fs.isfile(path)

    def invalidate_cache(self, path=None):
        with self._tables_lock:
            if path is None:
                self._tables.clear()
        if path is not None:
            self._forget_table([self.fs._strip_protocol(path)])
        self.fs.invalidate_cache(path)

    # -- reading ----------------------------------------------------------------------------

    @staticmethod
    def _resolve(start, end, size: int) -> tuple[int, int]:
        start = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
        end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        return start, end

    def cat_file(self, path, start=None, end=None, **kwargs):
        hide_internal_path(path)
        if not start and end is None:  # the whole object: one read, no metadata round trip
            return self._decode_blob(path, self.fs.cat_file(path, **kwargs))
        entry = self._target_file_entry(path)
        if entry["size"] <= SMALL_OBJECT:
            blob = self.fs.cat_file(path, **kwargs)
            try:
                kind = fmt.detect_format(blob) if len(blob) >= 4 else "zstd"
                if kind == "zstd":
                    table = fmt.parse_object(blob)
                    start, end = self._resolve(start, end, table.logical_size)
                    return self._frames_from(path, table, memoryview(blob), start, end, offset=0)
            except fmt.FormatError as exc:
                raise self._integrity(path, exc) from None
            data = self._decode_blob(path, blob)
            start, end = self._resolve(start, end, len(data))
            return data[start:end]
        meta = self._meta(path, entry)
        start, end = self._resolve(start, end, meta.logical_size)
        if end <= start:
            return b""
        if isinstance(meta, fmt.GzipTrailer):
            return self._gzip_range(path, entry["size"], meta, start, end)
        return self._read_range(path, meta, start, end)

    def _frames_from(self, path, table, view, start: int, end: int, offset: int,
                     frames: dict | None = None) -> bytes:
        """Logical ``[start, end)`` from stored bytes ``view`` that begin at ``offset``."""
        if end <= start:
            return b""
        first, last = table.frame_range(start, end)
        window = fmt.window_log_max(table.frame_size)

        def one(i):
            if frames is not None and i in frames:
                return frames[i]
            stored_at, length, size, checksum, digest = table.frame_info(i)
            piece = view[stored_at - offset : stored_at - offset + length]
            if len(piece) != length:
                raise fmt.FormatError(f"frame {i} is truncated")
            return fmt.decode_frame(piece, size, checksum, digest, window)

        try:
            count = last - first
            many = count > 1 and count * table.frame_size >= (1 << 20)
            outputs = self._map(one, range(first, last)) if many else [one(i) for i in range(first, last)]
        except fmt.FormatError as exc:
            raise self._integrity(path, exc) from None
        if frames is not None:
            for i, data in zip(range(first, last), outputs):
                frames[i] = data
                if hasattr(frames, "move_to_end"):
                    frames.move_to_end(i)
            while len(frames) > max(FILE_FRAME_CACHE, 1):
                frames.popitem(last=False)
        base = table.starts[first]
        if count == 1:
            return outputs[0][start - base : end - base]
        views = [memoryview(o) for o in outputs]
        views[0] = views[0][start - base :]
        views[-1] = views[-1][: len(views[-1]) - (table.starts[last] - end)]
        return b"".join(views)

    def _read_range(self, path, table, start: int, end: int, frames: dict | None = None) -> bytes:
        """Logical ``[start, end)`` of a seekable object: one target read of the frames needed."""
        if end <= start:
            return b""
        first, last = table.frame_range(start, end)
        needed = [i for i in range(first, last) if frames is None or i not in frames]
        view = memoryview(b"")
        offset = 0
        if needed:
            offset, stop = table.offsets[needed[0]], table.offsets[needed[-1] + 1]
            blob = self.fs.cat_file(path, start=offset, end=stop)
            if len(blob) != stop - offset:
                raise self._integrity(path, "object is truncated (a frame is cut short)")
            view = memoryview(blob)
        return self._frames_from(path, table, view, start, end, offset, frames)

    def _gzip_stream(self, path, stored: int, trailer) -> Iterable[bytes]:
        f = self.fs.open(path, "rb")
        try:
            yield from fmt.gzip_decode(f.read, stored, trailer)
        except fmt.FormatError as exc:
            raise self._integrity(path, exc) from None
        finally:
            f.close()

    def _gzip_range(self, path, stored: int, trailer, start: int, end: int) -> bytes:
        """Logical ``[start, end)`` of a gzip object: inflate it all (verified), keep the range."""
        parts, position = [], 0
        for piece in self._gzip_stream(path, stored, trailer):
            lo, hi = max(start - position, 0), min(end - position, len(piece))
            if lo < hi:
                parts.append(piece[lo:hi])
            position += len(piece)
        return b"".join(parts)

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        if isinstance(path, list) and not recursive and not any(has_glob(p) for p in path):
            paths = path
        else:
            paths = self.expand_path(path, recursive=recursive)
            if len(paths) == 1 and paths[0] == self._strip_protocol(path) and not recursive \
                    and not isinstance(path, list) and not has_glob(path):
                return self.cat_file(paths[0], **kwargs)
        for p in paths:
            hide_internal_path(p)
        stored = self.fs.cat(paths, on_error=on_error, **kwargs)  # one bulk call down
        items = list(stored.items())

        def decode(item):
            name, blob = item
            if isinstance(blob, BaseException):
                return blob
            try:  # frames serially here: pool tasks never wait on pool tasks
                return self._decode_blob(name, blob, parallel=len(items) < 2)
            except IntegrityError as exc:
                if on_error == "raise":
                    raise
                return exc

        decoded = self._map(decode, items)
        return {name: value for (name, _), value in zip(items, decoded)
                if not (on_error == "omit" and isinstance(value, BaseException))}

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode not in ("rb", "wb", "xb", "ab"):
            raise InvalidArgument(f"unsupported file mode {mode!r} (use rb, wb, xb or ab)")
        if mode == "rb":
            hide_internal_path(path)
            entry = self._target_file_entry(path)
            meta = self._meta(path, entry)
            if isinstance(meta, fmt.GzipTrailer):
                return GzipReadFile(self, path, entry["size"], meta, block_size)
            return SeekableReadFile(self, path, meta, block_size)
        refuse_internal_write(path)
        existing = None
        if mode == "ab":
            try:
                existing = self.cat_file(path)
            except FileNotFoundError:
                existing = None
        previous = self._stamp_or_none(path)
        target = self.fs.open(path, "xb" if mode == "xb" else "wb")
        writer = CompressedWriteFile(self, path, target, previous)
        if existing:
            try:
                writer.write(existing)
            except BaseException:
                writer.discard()
                raise
        return writer

    def _stamp_or_none(self, path) -> str | None:
        try:
            entry = self.fs.info(path)
        except Exception:
            return None
        return stamp_of(entry) or f"size={entry.get('size')}"

    def _remove_partial(self, path, previous: str | None) -> None:
        """After a failed write: remove what a non-atomic target committed early."""
        try:
            now = self._stamp_or_none(path)
            if now is not None and now != previous:
                self.fs.rm_file(path)
        except Exception:
            pass

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        hide_internal_path(rpath)
        try:
            src = self.open(rpath, "rb")
        except IsADirectoryError:
            os.makedirs(lpath, exist_ok=True)
            return
        with src:
            callback.set_size(src.size)
            chunk = COPY_CHUNK_FRAMES * self.frame_size
            if outfile is not None:
                while data := src.read(chunk):
                    outfile.write(data)
                    callback.relative_update(len(data))
                return
            parent = os.path.dirname(os.fspath(lpath))
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(lpath, "wb") as dst:
                while data := src.read(chunk):
                    dst.write(data)
                    callback.relative_update(len(data))

    # -- writing ----------------------------------------------------------------------------

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        refuse_internal_write(path)
        blob = self._encode_bytes(value)
        self.fs.pipe_file(path, blob, mode=mode, **kwargs)
        self._record_written({path: len(value)})

    def pipe(self, path, value=None, **kwargs):
        if isinstance(path, str):
            path = {path: value}
        prefix = f"{self.protocol}://"
        path = {type(self)._strip_protocol(k) if isinstance(k, str) and k.startswith(prefix) else k: v
                for k, v in path.items()}
        for p in path:
            refuse_internal_write(p)
        items = list(path.items())
        if any(len(v) > self.frame_size for _, v in items):  # frames of big files in parallel
            blobs = [self._encode_bytes(v) for _, v in items]
        else:  # many small files: files in parallel
            blobs = self._map(lambda kv: self._encode_bytes(kv[1], parallel=False), items)
        self.fs.pipe({k: b for (k, _), b in zip(items, blobs)}, **kwargs)
        self._record_written({k: len(v) for k, v in items})

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        refuse_internal_write(rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        with open(lpath, "rb") as src:
            callback.set_size(os.fstat(src.fileno()).st_size)
            with self.open(rpath, "xb" if mode == "create" else "wb") as dst:
                while data := src.read(COPY_CHUNK_FRAMES * self.frame_size):
                    dst.write(data)
                    callback.relative_update(len(data))

    def cp_file(self, path1, path2, **kwargs):
        hide_internal_path(path1)
        refuse_internal_write(path2)
        self.fs.cp_file(path1, path2, **kwargs)  # stored bytes as they are (server-side copy)
        try:
            entry = self.fs.info(path2)
        except Exception:
            return
        if entry.get("type") == "file":
            self._forget_table([_entry_name(entry)])
            self._logical_entries([entry])  # a miss: one tail read, then cached

    def touch(self, path, truncate=True, **kwargs):
        refuse_internal_write(path)
        if truncate or not self.fs.exists(path):
            self.pipe_file(path, b"")
        else:  # a new mtime: refresh the cached size now rather than at the next listing
            self.fs.touch(path, truncate=False, **kwargs)
            self._forget_table([self.fs._strip_protocol(path)])
            self._logical_entries([self.fs.info(path)])

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        result = super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        if isinstance(path1, str) and isinstance(path2, str) and not has_glob(path1):
            source, dest = self.fs._strip_protocol(path1), self.fs._strip_protocol(path2)
            self._forget_table([source, dest])
            self._sizes.move(self.target_id, source, dest)
        return result

    def rm_file(self, path):
        result = super().rm_file(path)
        self._forget_paths([path])
        return result

    def rm(self, path, recursive=False, maxdepth=None):
        result = super().rm(path, recursive=recursive, maxdepth=maxdepth)
        paths = path if isinstance(path, list) else [path]
        self._forget_paths([p for p in paths if isinstance(p, str) and not has_glob(p)])
        return result

    def _forget_paths(self, paths: list) -> None:
        names = [self.fs._strip_protocol(p) for p in paths]
        self._forget_table(names)
        self._sizes.forget(self.target_id, names)


# -- files -------------------------------------------------------------------------------------


class CompressedWriteFile(WriteOnlyFile, io.BufferedIOBase):
    """A file being written through :class:`Compress`: frames are compressed in the layer's
    thread pool (at most ``threads + 2`` in flight) and appended to one target file.

    Closing writes the trailer and seek table and closes (commits) the target file; an
    exception inside ``with``, :meth:`discard` or a failure while writing abandons the
    target file, and a target that already committed something (non-atomic) has it removed.
    """

    def __init__(self, layer: Compress, path: str, target, previous: str | None):
        super().__init__()
        self.layer = layer
        self.path = path
        self.mode = "wb"
        self._target = target
        self._previous = previous
        self._position = 0
        self._buffer = bytearray()
        self._pending: collections.deque = collections.deque()
        self._max_pending = layer.threads + 2
        self._frames_submitted = 0
        self._done = False
        self._gzip_level: int | None = None
        try:
            if layer.mode == "gzip":
                self._encoder: Any = None  # chosen once the first threshold bytes are known
            else:
                self._encoder = fmt.SeekableEncoder(layer.frame_size)
                self._target.write(self._encoder.header())
        except BaseException:
            self._abandon()
            raise

    # io interface ----------------------------------------------------------------------------

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        """Nothing to do: a frame is only written once full (or at close)."""

    def write(self, data) -> int:
        if self._done:
            raise ValueError("I/O operation on closed file")
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        n = len(view)
        immutable = isinstance(data, bytes)
        try:
            if self.layer.mode == "gzip":
                self._write_gzip(view)
            else:
                self._write_frames(view, immutable)
        except BaseException:
            self._abandon()
            raise
        self._position += n
        return n

    def _write_frames(self, view: memoryview, immutable: bool) -> None:
        size = self.layer.frame_size
        if self._buffer:
            take = min(size - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == size:
                frame, self._buffer = self._buffer, bytearray()
                self._submit(frame)
        while len(view) >= size:
            self._submit(view[:size] if immutable else bytes(view[:size]))
            view = view[size:]
        if len(view):
            self._buffer += view

    def _submit(self, frame, compress: bool = True) -> None:
        layer = self.layer
        self._pending.append(layer._executor().submit(
            fmt.encode_frame, frame, layer.level, layer.min_saving, compress))
        self._frames_submitted += 1
        while len(self._pending) > self._max_pending:
            self._drain_one()

    def _drain_one(self) -> None:
        frame = self._pending.popleft().result()
        self._target.write(self._encoder.add(frame))

    def _write_gzip(self, view: memoryview) -> None:
        if self._encoder is None:
            self._buffer += view
            if len(self._buffer) >= self.layer.compression_threshold:
                self._start_gzip(self.layer.level)
            return
        out = self._encoder.compress(view)
        if out:
            self._target.write(out)

    def _start_gzip(self, level: int) -> None:
        self._encoder = fmt.GzipEncoder(level)
        self._target.write(self._encoder.header())
        pending, self._buffer = self._buffer, bytearray()
        if pending:
            out = self._encoder.compress(pending)
            if out:
                self._target.write(out)

    # finishing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Write the last frame, the trailer and the seek table; commit the target file."""
        if self._done:
            return
        layer = self.layer
        try:
            if layer.mode == "gzip":
                if self._encoder is None:  # a small file: stored (deflate level 0)
                    self._start_gzip(0)
            elif self._buffer:
                compress = self._frames_submitted > 0 or \
                    len(self._buffer) >= layer.compression_threshold
                if self._pending or len(self._buffer) > SMALL_OBJECT:
                    self._submit(bytes(self._buffer), compress)
                else:  # one small frame: no thread hop
                    frame = fmt.encode_frame(self._buffer, layer.level, layer.min_saving, compress)
                    self._target.write(self._encoder.add(frame))
                self._buffer = bytearray()
            while self._pending:
                self._drain_one()
            self._target.write(self._encoder.finish())
            self._done = True
            self._target.close()
        except BaseException:
            self._done = False
            self._abandon()
            raise
        finally:
            super().close()
        layer._record_written({self.path: self._encoder.logical_size})

    def discard(self) -> None:
        """Abandon the write: the target keeps its old content (or stays absent)."""
        self._abandon()

    def _abandon(self) -> None:
        if self._done:
            return
        self._done = True
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._buffer = bytearray()
        target = self._target
        try:
            if hasattr(target, "discard"):
                target.discard()
            elif hasattr(target, "__exit__"):
                target.__exit__(RuntimeError, RuntimeError("write abandoned"), None)
            else:
                target.close()
        except Exception:
            try:
                target.close()
            except Exception:
                pass
        self.layer._remove_partial(self.path, self._previous)
        super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()


class SeekableReadFile(AbstractBufferedFile):
    """A zstd seekable object opened for reading: seek + read fetch only the frames touched.

    It keeps the last few decoded frames, so small sequential reads decode each frame once.
    """

    def __init__(self, layer: Compress, path: str, table, block_size=None):
        self._layer = layer
        self._table = table
        self._frames: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        super().__init__(layer, path, mode="rb", block_size=block_size or table.frame_size,
                         cache_type="none", size=table.logical_size)

    def _fetch_range(self, start, end):
        start, end = max(start, 0), min(end, self._table.logical_size)
        return self._layer._read_range(self.path, self._table, start, end, self._frames)


class GzipReadFile(AbstractBufferedFile):
    """A gzip object opened for reading: inflated and verified once, on the first read,
    into a spooled temporary file (memory up to 32 MiB, then disk); then served from it."""

    SPOOL_MEMORY = 32 << 20

    def __init__(self, layer: Compress, path: str, stored: int, trailer, block_size=None):
        self._layer = layer
        self._stored = stored
        self._trailer = trailer
        self._spool = None
        super().__init__(layer, path, mode="rb", block_size=block_size or (1 << 20),
                         cache_type="none", size=trailer.logical_size)

    def _fetch_range(self, start, end):
        if self._spool is None:
            spool = tempfile.SpooledTemporaryFile(max_size=self.SPOOL_MEMORY)
            try:
                for piece in self._layer._gzip_stream(self.path, self._stored, self._trailer):
                    spool.write(piece)
            except BaseException:
                spool.close()
                raise
            self._spool = spool
        self._spool.seek(start)
        return self._spool.read(max(0, end - start))

    def close(self):
        super().close()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
