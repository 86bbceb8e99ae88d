"""``Quota``: storage limits enforced at write time, before data lands.

``Quota(fs=target, max_bytes="5GB", max_file_size="100MB", max_files=None)``

* **What it counts.** The bytes that pass through it: the sizes its target reports
  (``info``/``find``), which are the logical sizes of the layer below. At the top of a stack
  it limits logical bytes (what users see, ``df`` on the mount agrees with ``du``); placed
  below a compressing or deduplicating layer (``Dedup(Compress(Quota(Local)))``) it limits
  the bytes actually stored; there, pass ``count_internal=True`` so the layers' internal
  data under ``.aiofs/`` (dedup packs, indexes) is counted too (by default internal data
  passes uncounted). See ``docs/formats/quota.md``.
* **Enforced before data lands.** A streaming write fails on the ``write()`` call that
  carries the byte crossing a limit (``FILE_TOO_LARGE``, ``STORAGE_QUOTA_EXCEEDED``); the
  target's half-written file is discarded, so nothing partial is stored on an atomic
  target (LocalBackend, object stores). Writes of known size (``pipe_file``, ``pipe``,
  ``put_file``, ``cp_file``) are checked before a byte is sent.
* **Reservations.** Space is reserved in SQLite under ``BEGIN IMMEDIATE`` before a write
  proceeds, so two processes writing at once cannot together pass the limit. A stream
  reserves in growing chunks (near the limit, at most 1/16 of the free space ahead of its
  bytes, so it does not crowd out other writers); a write of known size charges its size in
  one transaction and is refunded if the target refuses it. Far from the limit, small writes
  of known size draw on a per-process **lease** (a reservation of at most 64 MiB and 1/16 of
  the free space) and are recorded in batches (:meth:`Quota.flush`, also at exit), so they
  cost no transaction each; the lease is reserved space, so the limit holds across
  processes. A bulk ``pipe`` of 64 files or more draws on the lease too when it fits (its
  rows wait with the lease's files); otherwise it is checked and recorded in one transaction
  before its bytes go down, with a marker row that makes a process dying in between recount
  at the next open. Reservations carry the writer's pid, host and a timestamp: those of a
  dead process, or older than ``reservation_ttl`` seconds, expire. Overwrites credit the old
  size of the file; deletes and renames give space back.
* **Persistence and reconciliation.** Usage lives in a SQLite database (WAL) in
  ``state_dir`` (default: the user state dir, one file per target ``fsid``) or at
  ``db_path``. At open, a missing or stale database (``recount_after`` seconds since the
  last recount; always for an in-memory target) is rebuilt with one ``find`` of the target;
  :meth:`Quota.recount` (``aiofs quota --recount``) does it on demand.
* **Alerts.** ``thresholds`` (default 80 %, 90 %, 100 % of ``max_bytes``): each upward
  crossing fires once (falling back below re-arms it), to the callbacks given to
  :meth:`Quota.on_alert`, to the ``aiofs.quota`` logger (WARNING) and to the ``alerts``
  table that :meth:`Quota.alerts` reads.
* **statfs.** :meth:`Quota.statfs` gives total/used/free bytes and file counts for the mount.

Sizes are numbers of bytes or strings such as ``"100MB"``, ``"5 GB"``, ``"1.5GiB"``
(K/M/G/T are powers of 1024, with or without ``i``). ``max_bytes`` defaults to
``$MAX_LOCAL_STORAGE_GB`` GiB, else 5 GiB; ``None`` means unlimited.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from aiofs.errors import ConfigError, FileTooLarge, InvalidArgument, StorageQuotaExceeded
from aiofs.sqlite_state import ThreadConnections
from aiofs.layer import (
    ATOMIC_WRITES, INTERNAL_DIR, Layer, describe, has_glob, internal_access, is_internal,
    WriteOnlyFile, refuse_internal_write, target_identity,
)

__all__ = ["Quota", "parse_size", "DEFAULT_MAX_FILE_SIZE", "DEFAULT_THRESHOLDS"]

log = logging.getLogger("aiofs.quota")

FORMAT = "aiofs-quota"
FORMAT_VERSION = 1
APPLICATION_ID = 0x61667175  # "afqu": `PRAGMA application_id` of a quota database

GIB = 1 << 30
DEFAULT_MAX_FILE_SIZE = 100 << 20
DEFAULT_MAX_GB = 5.0
DEFAULT_THRESHOLDS = (0.8, 0.9, 1.0)
# A stream keeps its first bytes in memory: a small file opened with open('wb') then costs
# one transaction at close, like pipe_file, instead of a reservation and a commit.
STREAM_BUFFER = 256 << 10
# A streaming write reserves ahead in chunks: the first as large as a lease may be (at
# most MAX_RESERVATION and 1/LEASE_SHARE of the free space, at least MIN_RESERVATION), then
# each chunk doubles what is reserved, by at most MAX_RESERVATION at a time: far from the
# limit most files take one reservation transaction, and a file of any size a handful.
# Near the limit (less than LEASE_SHARE * MIN_RESERVATION free) no chunk reaches further
# ahead than 1/LEASE_SHARE of the free space (at least STREAM_BUFFER), so an open stream
# never refuses another writer's file for space it has not written yet.
MIN_RESERVATION = 4 << 20
MAX_RESERVATION = 256 << 20
# Small writes of known size draw on a per-process lease (a reservation row) instead of a
# transaction each; their rows are recorded in batches. A lease is at most LEASE_MAX and at
# most 1/LEASE_SHARE of the free space, so near the limit every write is checked exactly.
LEASE_PATH = "*lease*"
BATCH_PATH = "*batch*"  # a big bulk pipe's marker (0 bytes) until its bytes have landed
BATCH_MIN_FILES = 64    # bulk pipes of at least this many files leave a marker while they land
_SPECIAL_PATHS = (LEASE_PATH, BATCH_PATH)
LEASE_MAX = 64 << 20
LEASE_MIN = 1 << 20
LEASE_SHARE = 16
LEASE_FLUSH_FILES = 256
LEASE_FLUSH_SECONDS = 1.0
_MISSING = object()
_LIVE: list[weakref.ref] = []  # every Quota of this process, for the flush at exit


@atexit.register
def _settle_all() -> None:
    for ref in list(_LIVE):
        quota = ref()
        if quota is not None:
            with contextlib.suppress(Exception):
                quota.flush()


def _after_fork_in_child() -> None:
    """A forked child is a new process: the parent's lease, pending files and recording
    thread are not its own, and a lock a parent thread held at the fork would never be
    released here. (Done once here, not checked on every write.)"""
    for ref in list(_LIVE):
        quota = ref()
        if quota is not None:
            quota._lease_lock = threading.RLock()
            quota._reset_lease()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    used INTEGER NOT NULL,          -- sum of files.size
    files INTEGER NOT NULL,         -- count of files rows
    fired INTEGER NOT NULL,         -- bit i set: thresholds[i] crossed, not yet re-armed
    reconciled_at REAL              -- unix time of the last recount, NULL: never
);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,         -- bytes reserved (beyond the credited old size)
    new_file INTEGER NOT NULL,      -- 1: the path holds no file yet (counts for max_files)
    credit INTEGER NOT NULL,        -- old size of the path credited to this writer
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    threshold REAL NOT NULL,
    crossed_at REAL NOT NULL,
    used INTEGER NOT NULL,
    max_bytes INTEGER NOT NULL,
    path TEXT
);
"""


_STATE_SQL = (
    "SELECT used, files, fired, "
    "(SELECT COALESCE(SUM(bytes), 0) FROM reservations), "
    "(SELECT COALESCE(SUM(new_file), 0) FROM reservations) FROM usage"
)


def parse_size(value: Any, name: str = "size") -> int | None:
    """Bytes from an int or a string such as ``"100MB"``; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a size, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise InvalidArgument(f"{name} must not be negative, got {value!r}")
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise InvalidArgument(f"{name}: cannot read {value!r} as a size (e.g. 100MB, 5GB, 1048576)")


def default_max_bytes() -> int:
    """``$MAX_LOCAL_STORAGE_GB`` GiB, else 5 GiB."""
    raw = os.environ.get("MAX_LOCAL_STORAGE_GB")
    try:
        gb = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        raise ConfigError(f"environment variable MAX_LOCAL_STORAGE_GB={raw!r} is not a number") from None
    return int(gb * GIB)


def _human(n: int | None) -> str:
    if n is None:
        return "unlimited"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _declared_atomic(fs) -> bool:
    """True for targets that declare atomic writes (aiofs backends and layers over them):
    a discarded write leaves nothing there, so the writer needs not know if the file existed.
    """
    declared = getattr(fs, "capabilities", None)
    return isinstance(declared, frozenset) and ATOMIC_WRITES in declared


def _plain_key(path) -> bool:
    """True for a path a target with ``_fast_keys`` names exactly as it is, outside any
    INTERNAL_DIR: absolute, with no empty, ``.`` or ``..`` component, no trailing slash,
    backslash, NUL or protocol colon. Plain substring tests, stricter than ``_UNCLEAN`` (any
    name starting with a dot fails): on the hot path of small writes they cost less than the
    regex engine when the CPU comes back cold from the previous write's fsync."""
    return (type(path) is str and path[:1] == "/" and path[-1] != "/" and "/." not in path
            and "//" not in path and ":" not in path and "\\" not in path and "\x00" not in path)


def _all_plain_keys(keys: Collection) -> bool:
    """:func:`_plain_key` of every key of a bulk write at once: one join and a few scans in C
    instead of Python work per key. NUL joins the keys (no plain key contains it), so the
    scans cannot match across two keys, and counting NULs proves none was inside a key."""
    try:
        joined = "\x00".join(keys)
    except TypeError:  # a key that is not a str
        return False
    boundaries = len(keys) - 1
    return (joined[:1] == "/" and joined[-1:] != "/" and joined.count("\x00") == boundaries
            and joined.count("\x00/") == boundaries and "/\x00" not in joined
            and "/." not in joined and "//" not in joined and ":" not in joined
            and "\\" not in joined)


_HOST = socket.gethostname()
_PROBE = "/aiofs-probe/dir/file.txt"
_UNCLEAN = re.compile(r"//|/\.\.?(?:/|$)|/$|\\|\x00|:")
# Many rows go to SQLite as one JSON object {key: size}: each statement then runs wholly
# inside SQLite (one call, not one per row; executemany also takes the GIL back per row).
_OLD_ROWS = "SELECT f.path, f.size FROM json_each(?) AS j JOIN files AS f ON f.path = j.key"
_PUT_ROWS = "INSERT OR REPLACE INTO files (path, size) SELECT key, value FROM json_each(?)"
_ANY_ROW_BETWEEN = "SELECT 1 FROM files WHERE path BETWEEN ? AND ? LIMIT 1"


class Quota(Layer):
    """Limits total bytes, file size and file count of writes through it (see module doc)."""

    protocol = "aiofs-quota"

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict | None = None,
        max_bytes: int | str | None = "default",
        max_file_size: int | str | None = DEFAULT_MAX_FILE_SIZE,
        max_files: int | None = None,
        thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
        state_dir: str | None = None,
        db_path: str | None = None,
        recount_after: float | None = 86400.0,
        reservation_ttl: float = 3600.0,
        count_internal: bool = False,
        **options: Any,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options,
                         **options)
        self.max_bytes = default_max_bytes() if max_bytes == "default" else parse_size(max_bytes, "max_bytes")
        self.max_file_size = parse_size(max_file_size, "max_file_size")
        if max_files is not None and (not isinstance(max_files, int) or max_files < 0):
            raise InvalidArgument(f"max_files must be a non-negative integer, got {max_files!r}")
        self.max_files = max_files
        self.thresholds = sorted(float(t) for t in thresholds)
        if any(not 0 < t <= 10 for t in self.thresholds):
            raise InvalidArgument(f"thresholds are fractions of max_bytes (0.8 = 80%), got {thresholds!r}")
        self.reservation_ttl = float(reservation_ttl)
        self.count_internal = bool(count_internal)
        self.recount_after = recount_after
        self.target_id = target_identity(self.fs)
        self._atomic_target = _declared_atomic(self.fs)  # asked once: every write needs it
        try:  # targets that keep clean absolute paths as they are (local, memory)
            self._fast_keys = self.fs._strip_protocol(_PROBE) == _PROBE
        except Exception:
            self._fast_keys = False
        if db_path is None:
            base = Path(state_dir).expanduser() if state_dir else (
                Path(__import__("platformdirs").user_state_path("aiofs")) / "quota")
            digest = hashlib.sha256(self.target_id.encode()).hexdigest()[:16]
            slug = re.sub(r"[^A-Za-z0-9]+", "-", self.target_id).strip("-")[-40:]
            db_path = str(base / f"{slug}-{digest}.db")
        self.db_path = os.path.abspath(os.path.expanduser(db_path))
        # fewer, larger checkpoints (each one fsyncs the WAL and the database)
        self._connections = ThreadConnections(self.db_path, synchronous="NORMAL",
                                              pragmas=("wal_autocheckpoint = 8192",))
        self._callbacks: list[Callable[[dict], None]] = []
        self._lease_lock = threading.RLock()
        self._reset_lease()
        _LIVE[:] = [r for r in _LIVE if r() is not None]
        _LIVE.append(weakref.ref(self))
        created = self._init_db()
        if self._needs_recount(created):
            self.recount()

    # -- database --------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        return self._connections.db()

    @contextlib.contextmanager
    def _tx(self):
        """A write transaction (``BEGIN IMMEDIATE``: one writer at a time, across processes).

        It also drops the markers of this process's bulk pipes that have landed (see
        :meth:`_pipe_big`): they ride along with the next transaction instead of costing
        one of their own.
        """
        with self._connections.tx() as conn:
            yield conn
            if self._landed:
                self._drop_landed(conn)

    def _drop_landed(self, conn) -> None:
        """Inside a transaction: delete the ``*batch*`` markers of landed bulk pipes."""
        landed = self._landed
        ids = []
        with contextlib.suppress(IndexError):  # pop: another thread may take some first
            while landed:
                ids.append(landed.pop())
        try:
            conn.executemany("DELETE FROM reservations WHERE id = ?", [(i,) for i in ids])
        except BaseException:
            landed.extend(ids)  # the transaction rolls back: dropped by a later one
            raise

    def _init_db(self) -> bool:
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        conn = self._db()
        with self._tx():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("version", str(FORMAT_VERSION)),
                    ("target", self.target_id), ("created_at", repr(time.time())),
                ])
                conn.execute("INSERT INTO usage VALUES (1, 0, 0, 0, NULL)")
                return True
            if rows.get("format") != FORMAT or int(rows.get("version", 0)) > FORMAT_VERSION:
                raise ConfigError(
                    f"{self.db_path} is not an {FORMAT} database of version <= {FORMAT_VERSION} "
                    f"(format={rows.get('format')!r}, version={rows.get('version')!r})")
        return False

    def _needs_recount(self, created: bool) -> bool:
        if created:
            return True
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if "memory" in protocols:  # the store dies with the process, the database does not
            return True
        conn = self._db()
        leases = conn.execute("SELECT pid FROM reservations WHERE path IN (?, ?) AND host = ?",
                              (*_SPECIAL_PATHS, _HOST)).fetchall()
        if any(not _pid_alive(pid) for (pid,) in leases):
            return True  # a process died before recording what it wrote on its lease
        (reconciled,) = conn.execute("SELECT reconciled_at FROM usage").fetchone()
        if reconciled is None:
            return True
        if self.recount_after is None:
            return False
        return reconciled is None or time.time() - reconciled > self.recount_after

    # -- paths -------------------------------------------------------------------------------

    def _key(self, path) -> str:
        """The path as the target names it (the key of the ``files`` table)."""
        if self._fast_keys and type(path) is str and path[:1] == "/" and not _UNCLEAN.search(path):
            return path  # already canonical for this target: skip its (slow) normalisation
        return self._strip_protocol(path)

    @staticmethod
    def _prefix_clause(key: str) -> tuple[str, tuple]:
        """SQL matching ``key`` and everything below it (the whole table for the root)."""
        if key.strip("/") == "":
            return "1", ()
        key = key.rstrip("/")
        return "(path = ? OR (path > ? AND path < ?))", (key, key + "/", key + "0")

    def _counted(self, path) -> bool:
        """Whether writes to ``path`` are counted (internal data only with ``count_internal``)."""
        return self.count_internal or not is_internal(path)

    def _scan(self, path) -> dict[str, int]:
        """Counted files (name -> size) at or below ``path`` on the target right now."""
        if not self._counted(path):
            return {}
        with internal_access() if self.count_internal else contextlib.nullcontext():
            try:
                entry = self.fs.info(path)
            except FileNotFoundError:
                return {}
            if entry.get("type") != "directory":
                return {self._key(entry["name"]): int(entry.get("size") or 0)}
            found = self.fs.find(path, detail=True)
        return {self._key(name): int(e.get("size") or 0) for name, e in found.items()
                if e.get("type") != "directory" and self._counted(name)}

    # -- accounting primitives (each one transaction) ----------------------------------------

    def _state(self, conn) -> tuple[int, int, int, int, int]:
        """``(used, files, fired, reserved bytes, reserved new files)`` in one statement."""
        return conn.execute(_STATE_SQL).fetchone()

    def _expire_reservations(self, conn) -> int:
        now = time.time()
        dead = [(rid, path) for rid, path, pid, host, updated in conn.execute(
                    "SELECT id, path, pid, host, updated_at FROM reservations")
                if now - updated > self.reservation_ttl or (host == _HOST and not _pid_alive(pid))]
        conn.executemany("DELETE FROM reservations WHERE id = ?", [(r,) for r, _ in dead])
        if any(path in _SPECIAL_PATHS for _, path in dead):
            # a process died holding a lease: files it wrote may be unrecorded -> recount
            conn.execute("UPDATE usage SET reconciled_at = NULL")
        return len(dead)

    def _check(self, conn, path: str, delta: int, new_files: int) -> tuple[int, int]:
        """Raise if ``delta`` more bytes and ``new_files`` more files do not fit.

        Returns ``(used, fired)`` as read in this transaction.
        """
        for attempt in (0, 1):
            used, files, fired, reserved, reserved_files = self._state(conn)
            over_bytes = (self.max_bytes is not None and delta > 0
                          and used + reserved + delta > self.max_bytes)
            over_files = (self.max_files is not None and new_files > 0
                          and files + reserved_files + new_files > self.max_files)
            if not (over_bytes or over_files):
                return used, fired
            if attempt == 0 and not self._expire_reservations(conn):
                break
        if over_bytes:
            free = max(0, self.max_bytes - used - reserved)
            raise StorageQuotaExceeded(
                f"storage quota exceeded: {_human(delta)} more would pass {_human(self.max_bytes)} "
                f"({_human(used)} used, {_human(reserved)} reserved by writes in progress, "
                f"{_human(free)} free)", path)
        raise StorageQuotaExceeded(
            f"file count quota exceeded: limit {self.max_files} files ({files} stored)", path)

    def _set_file(self, conn, key: str, size: int | None, old: int | None) -> None:
        """Record ``key`` with ``size`` (``None``: removed), replacing ``old``."""
        if size is None:
            if old is not None:
                conn.execute("DELETE FROM files WHERE path = ?", (key,))
                conn.execute("UPDATE usage SET used = used - ?, files = files - 1", (old,))
            return
        conn.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (key, size))
        conn.execute("UPDATE usage SET used = used + ?, files = files + ?",
                     (size - (old or 0), 0 if old is not None else 1))

    def _old_size(self, conn, key: str) -> int | None:
        row = conn.execute("SELECT size FROM files WHERE path = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _credit(self, conn, key: str, old: int | None) -> int:
        """The old size a writer of ``key`` may count as given back (0 if another writes it)."""
        if not old:
            return 0
        busy = conn.execute("SELECT 1 FROM reservations WHERE path = ? LIMIT 1", (key,)).fetchone()
        return 0 if busy else old

    def _alerts_in_tx(self, conn, path: str | None, used: int | None = None,
                      fired: int | None = None) -> list[dict]:
        """Record threshold crossings for the usage now (``used``/``fired`` if already known)."""
        if self.max_bytes is None or not self.thresholds:
            return []
        if used is None or fired is None:
            used, _, fired = conn.execute("SELECT used, files, fired FROM usage").fetchone()
        events, mask = [], fired
        for i, threshold in enumerate(self.thresholds):
            crossed = used >= threshold * self.max_bytes if self.max_bytes else used > 0
            bit = 1 << i
            if crossed and not mask & bit:
                mask |= bit
                event = {"threshold": threshold, "crossed_at": time.time(), "used": used,
                         "max_bytes": self.max_bytes, "path": path}
                conn.execute(
                    "INSERT INTO alerts (threshold, crossed_at, used, max_bytes, path) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (threshold, event["crossed_at"], used, self.max_bytes, path))
                events.append(event)
            elif not crossed and mask & bit:
                mask &= ~bit
        if mask != fired:
            conn.execute("UPDATE usage SET fired = ?", (mask,))
        return events

    def _fire(self, events: list[dict]) -> None:
        for event in events:
            log.warning("storage quota: %.0f%% threshold crossed (%s of %s used, last write %s)",
                        event["threshold"] * 100, _human(event["used"]),
                        _human(event["max_bytes"]), event["path"])
            for callback in list(self._callbacks):
                try:
                    callback(dict(event))
                except Exception:  # a broken callback must not fail the write
                    log.exception("quota alert callback %r failed", callback)

    def _check_file_size(self, key: str, size: int) -> None:
        if self.max_file_size is not None and size > self.max_file_size:
            raise FileTooLarge(
                f"file too large: {_human(size)} ({size} bytes) is over the "
                f"{_human(self.max_file_size)} ({self.max_file_size} bytes) limit per file", key)

    def _old_sizes(self, conn, keys: Collection[str], rows: str | None = None) -> dict[str, int]:
        """Recorded sizes of those of ``keys`` that hold a file (one query); ``rows``: the
        batch as its JSON object, when the caller has made it already."""
        if len(keys) == 1:
            (key,) = keys
            row = conn.execute("SELECT size FROM files WHERE path = ?", (key,)).fetchone()
            return {} if row is None else {key: row[0]}
        # Every key lies between the least and the greatest: with no row in that range (new
        # files, the common case) one probe answers for the whole batch, not one per key.
        if conn.execute(_ANY_ROW_BETWEEN, (min(keys), max(keys))).fetchone() is None:
            return {}
        if rows is None:
            rows = json.dumps(dict.fromkeys(keys, 0), ensure_ascii=False)
        return dict(conn.execute(_OLD_ROWS, (rows,)))

    def _charge_tx(self, items: dict[str, int], marker: bool = False
                   ) -> tuple[list[str], dict[str, int], int | None]:
        """Check and record files of known size in one transaction.

        Returns what :meth:`_refund_tx` needs (the keys and the old sizes of those that
        existed), and with ``marker`` the id of a ``*batch*`` reservation of 0 bytes added in
        the same transaction (see :meth:`_pipe_big`).
        """
        if not items:
            return [], {}, None
        if self.max_file_size is not None and max(items.values()) > self.max_file_size:
            for key, size in items.items():
                self._check_file_size(key, size)
        keys = list(items)
        first = keys[0]
        rows = json.dumps(items, ensure_ascii=False)
        with self._tx() as conn:
            olds = self._old_sizes(conn, keys, rows)
            credit = sum(olds.values())
            if olds and conn.execute("SELECT 1 FROM reservations LIMIT 1").fetchone():
                busy = {row[0] for row in conn.execute("SELECT DISTINCT path FROM reservations")}
                credit = sum(size for key, size in olds.items() if key not in busy)
            total = sum(items.values())
            new_files = len(keys) - len(olds)
            used, fired = self._check(conn, first, total - credit, new_files)
            change = self._record_files(conn, items, rows, olds)
            marker_id = None
            if marker:
                now = time.time()
                marker_id = conn.execute(
                    "INSERT INTO reservations (path, bytes, new_file, credit, pid, host, "
                    "created_at, updated_at) VALUES (?, 0, 0, 0, ?, ?, ?, ?)",
                    (BATCH_PATH, os.getpid(), _HOST, now, now)).lastrowid
            events = self._alerts_in_tx(conn, first if len(keys) == 1 else None,
                                        used + change, fired)
        if events:
            self._fire(events)
        return keys, olds, marker_id

    def _refund_tx(self, charged: tuple[list[str], dict[str, int]]) -> None:
        """Undo :meth:`_charge_tx` after the target refused the write."""
        keys, olds, _ = charged
        with self._tx() as conn:
            for key in keys:
                self._set_file(conn, key, olds.get(key), self._old_size(conn, key))
            self._alerts_in_tx(conn, None)

    # -- the per-process lease (fast path for small writes of known size) ----------------------

    def _reset_lease(self) -> None:
        self._lease_id: int | None = None
        self._lease_left = 0
        self._pending: dict[str, int] = {}
        self._pending_since = 0.0
        # at most one thread recording the pending files of the lease; those it failed to
        # record come back through ``_unrecorded``
        self._background: threading.Thread | None = None
        self._unrecorded: dict[str, int] | None = None
        # ids of the *batch* markers of bulk pipes that have landed, for the next transaction
        self._landed: list[int] = []

    def _record_files(self, conn, items: dict[str, int], rows: str | None = None,
                      olds: dict[str, int] | None = None) -> int:
        """Inside a transaction: record written files (key -> size) in the books; returns
        the change of ``used``. ``rows`` (the items as JSON) and ``olds`` (their recorded
        sizes) when the caller has them already."""
        if not items:
            return 0
        if rows is None:
            rows = json.dumps(items, ensure_ascii=False)
        if olds is None:
            olds = self._old_sizes(conn, items, rows)
        conn.execute(_PUT_ROWS, (rows,))
        change = sum(items.values()) - sum(olds.values())
        conn.execute("UPDATE usage SET used = used + ?, files = files + ?",
                     (change, len(items) - len(olds)))
        return change

    def _join_background(self) -> None:
        """Under the lease lock: wait for the recording thread, if any; files of the lease it
        failed to record are pending again. (That thread never takes the lease lock.)"""
        background, self._background = self._background, None
        if background is not None:
            background.join()
        unrecorded, self._unrecorded = self._unrecorded, None
        if unrecorded:
            self._pending = {**unrecorded, **self._pending}

    def _record_in_background(self) -> None:
        """Under the lease lock: a thread records the pending files while this one goes on.

        The lease row still covers their bytes; the thread's transaction records them and
        shrinks the row by as much, so the books never show less than was written. It runs
        mostly while the writer waits for its disk (fsync releases the GIL).
        """
        self._join_background()
        recording, self._pending = self._pending, {}
        self._pending_since = time.monotonic()
        thread = threading.Thread(target=self._record_pending, args=(recording, self._lease_id),
                                  name="aiofs-quota-record")
        self._background = thread
        thread.start()

    def _record_pending(self, recording: dict[str, int], lease_id: int | None) -> None:
        try:
            with self._tx() as conn:
                self._record_files(conn, recording)
                if lease_id is not None:
                    conn.execute("UPDATE reservations SET bytes = MAX(0, bytes - ?), "
                                 "updated_at = ? WHERE id = ?",
                                 (sum(recording.values()), time.time(), lease_id))
                events = self._alerts_in_tx(conn, None)
        except Exception:
            log.warning("quota: recording written files failed; they are recorded later",
                        exc_info=True)
            self._unrecorded = recording  # the lease row still covers them
            return
        finally:
            self._connections.close()  # this thread ends here
        self._fire(events)

    def _share_of_free(self, conn, cap: int, own: int = 0) -> int:
        """What one writer may hold reserved ahead of its bytes: ``cap``, or near the limit
        a ``LEASE_SHARE``-th of the free space (its ``own`` reservation counted as free), so
        that writers ahead of their bytes never crowd out the others."""
        if self.max_bytes is None:
            return cap
        used, _, _, reserved, _ = self._state(conn)
        return min(cap, max(0, self.max_bytes - used - (reserved - own)) // LEASE_SHARE)

    def _lease_tx(self, size: int | None) -> bool:
        """Record pending files; then take a lease fit for ``size`` (``None``: give it up)."""
        self._join_background()  # the lease row changes below: nothing may record against it
        pending = dict(self._pending)
        try:
            with self._tx() as conn:
                self._record_files(conn, self._pending)
                self._pending = {}
                own = 0
                if self._lease_id is not None:
                    row = conn.execute("SELECT bytes FROM reservations WHERE id = ?",
                                       (self._lease_id,)).fetchone()
                    own = row[0] if row else 0
                want = 0
                if size is not None:
                    want = self._share_of_free(conn, LEASE_MAX, own)
                    if want < max(size, LEASE_MIN):
                        want = 0
                now = time.time()
                if want and self._lease_id is not None:
                    conn.execute("UPDATE reservations SET bytes = ?, updated_at = ? WHERE id = ?",
                                 (want, now, self._lease_id))
                elif want:
                    self._lease_id = conn.execute(
                        "INSERT INTO reservations (path, bytes, new_file, credit, pid, host, "
                        "created_at, updated_at) VALUES (?, ?, 0, 0, ?, ?, ?, ?)",
                        (LEASE_PATH, want, os.getpid(), _HOST, now, now)).lastrowid
                elif self._lease_id is not None:
                    conn.execute("DELETE FROM reservations WHERE id = ?", (self._lease_id,))
                self._lease_left = want
                events = self._alerts_in_tx(conn, None, None, None)
        except BaseException:
            self._pending = {**pending, **self._pending}
            raise
        if not want:
            self._lease_id = None
        self._pending_since = time.monotonic()
        if events:
            self._fire(events)
        return bool(want)

    def flush(self) -> None:
        """Record the files this process wrote on its lease, give the lease back, and drop
        the markers of its bulk pipes that have landed."""
        with self._lease_lock:
            self._join_background()
            if self._pending or self._lease_id is not None or self._landed:
                self._lease_tx(None)

    _release_lease = flush

    def record(self) -> None:
        """Record the files this process wrote on its lease but keep the lease (sized
        afresh), so other processes see exact usage while this one goes on writing on the
        fast path; :meth:`flush` also gives the lease back."""
        with self._lease_lock:
            self._join_background()
            if self._pending or self._landed:
                self._lease_tx(0 if self._lease_id is not None else None)

    def _settle_lease(self) -> None:
        """Before a write that records its own rows: record the lease's pending files first
        (a pending older size must not land over the newer one) and give the lease back."""
        with self._lease_lock:
            self._join_background()
            if self._pending or self._lease_id is not None:
                self._lease_tx(None)

    # -- big bulk pipes: check and record, write, drop the marker ---------------------------------

    def _pipe_big(self, path: dict, items: dict[str, int], **kwargs):
        """A big bulk pipe: one transaction checks and records the whole batch before its
        bytes go down, with a marker (a ``*batch*`` reservation of 0 bytes). The books count
        the files a moment before they land, never after, never twice; a process that dies
        in between leaves the marker (a dead pid), so the next open recounts. Once the
        target is done, the marker is dropped by this process's next transaction (or
        :meth:`flush`, also at exit): a marker that outlives its batch only costs a
        needless recount if the process is killed. A failed target write re-reads the
        batch's paths. (Recording in a thread while the target wrote cost more than it
        saved: thread start, waits, and contention with the writing thread.)
        """
        self._settle_lease()
        _, _, marker = self._charge_tx(items, marker=True)
        try:
            result = self.fs.pipe(path, **kwargs)
        except BaseException:
            self._landed.append(marker)  # dropped by _resync's transaction
            self._resync(list(path))  # a bulk write may have landed in part
            raise
        self._landed.append(marker)
        return result

    def _take_from_lease(self, items: dict[str, int]) -> bool:
        """A bulk write's bytes drawn from this process's lease (``False``: the lease cannot
        cover them, or ``max_files`` needs every file counted at once); its rows wait with
        the lease's other files. Raises ``FILE_TOO_LARGE`` before anything is taken."""
        if self.max_file_size is not None and max(items.values()) > self.max_file_size:
            for key, size in items.items():
                self._check_file_size(key, size)
        total = sum(items.values())
        if self.max_files is not None or total > LEASE_MAX:
            return False
        with self._lease_lock:
            if total > self._lease_left and not self._lease_tx(total):
                return False
            self._lease_left -= total
            self._pending.update(items)
        return True

    def _pipe_on_lease(self, path: dict, **kwargs):
        """A bulk pipe whose bytes the lease covers: no transaction of its own. Its rows are
        recorded with the lease's other files: at :meth:`flush` (or exit), or here once
        ``LEASE_FLUSH_FILES * 16`` files or ``LEASE_FLUSH_SECONDS`` are pending, in this thread
        (a recording thread would compete with the writer for the interpreter). A process
        that dies first leaves its lease row (a dead pid), so the next open recounts. A
        failed target write re-reads the batch's paths."""
        try:
            result = self.fs.pipe(path, **kwargs)
        except BaseException:
            self._resync(list(path))  # records what is pending, then what really landed
            raise
        if (len(self._pending) >= LEASE_FLUSH_FILES * 16
                or time.monotonic() - self._pending_since > LEASE_FLUSH_SECONDS):
            self.record()
        return result

    def _charge(self, items: dict[str, int]):
        """Check and record writes of known size; returns a token for :meth:`_refund`."""
        if len(items) == 1:
            ((key, size),) = items.items()
            return self._charge_one(key, size)
        self._settle_lease()
        return ("tx", self._charge_tx(items))

    def _charge_one(self, key: str, size: int):
        """:meth:`_charge` of one file: taken from this process's lease (no transaction)
        unless the lease is short or ``max_files`` needs every file counted at once."""
        if self.max_files is None:
            with self._lease_lock:
                if size > self._lease_left:
                    self._check_file_size(key, size)
                    if not self._lease_tx(size):
                        return ("tx", self._charge_tx({key: size}))
                elif self.max_file_size is not None and size > self.max_file_size:
                    self._check_file_size(key, size)
                self._lease_left -= size
                pending = self._pending
                previous = pending.get(key, _MISSING)
                pending[key] = size
                return ("lease", key, size, previous)
        self._settle_lease()
        return ("tx", self._charge_tx({key: size}))

    def _written(self, token) -> None:
        """The write charged with ``token`` landed: record the batch if it is due.

        Never before the write lands, so a refund always finds its entry still pending.
        """
        if token[0] != "lease":
            return
        if (len(self._pending) >= LEASE_FLUSH_FILES
                or time.monotonic() - self._pending_since > LEASE_FLUSH_SECONDS):
            with self._lease_lock:
                background = self._background
                if self._pending and (background is None or not background.is_alive()):
                    self._record_in_background()

    def _refund(self, token) -> None:
        """Undo :meth:`_charge` after the target refused the write."""
        if token[0] == "tx":
            return self._refund_tx(token[1])
        _, key, size, previous = token
        with self._lease_lock:
            if self._pending.get(key, _MISSING) == size:
                if previous is _MISSING:
                    del self._pending[key]
                else:
                    self._pending[key] = previous
                self._lease_left += size
                return
        self._settle_lease()
        self._resync([key])  # already recorded: record what the target really holds

    def _resync(self, paths: Iterable[str]) -> None:
        """Re-read the target at and below each path and record exactly what is there."""
        self._settle_lease()
        scans = {}
        for path in paths:
            key = self._key(path)
            scans[key] = self._scan(path)
        with self._tx() as conn:
            for key, found in scans.items():
                clause, args = self._prefix_clause(key)
                old = conn.execute(
                    f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM files WHERE {clause}", args
                ).fetchone()
                conn.execute(f"DELETE FROM files WHERE {clause}", args)
                conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?)", found.items())
                conn.execute("UPDATE usage SET used = used - ? + ?, files = files - ? + ?",
                             (old[0], sum(found.values()), old[1], len(found)))
            events = self._alerts_in_tx(conn, None)
        self._fire(events)

    # -- public API ------------------------------------------------------------------------------

    def recount(self) -> dict:
        """Rebuild the usage from one ``find`` of the whole target (``aiofs quota --recount``)."""
        self.flush()
        found = self._scan(self.fs.root_marker)
        with self._tx() as conn:
            conn.execute("DELETE FROM files")
            conn.executemany("INSERT INTO files VALUES (?, ?)", found.items())
            conn.execute("UPDATE usage SET used = ?, files = ?, reconciled_at = ?",
                         (sum(found.values()), len(found), time.time()))
            self._expire_reservations(conn)
            events = self._alerts_in_tx(conn, None)
        self._fire(events)
        return self.usage()

    def usage(self) -> dict:
        """Usage and limits: ``used``, ``reserved``, ``files``, ``free``, ``percent``..."""
        self.flush()
        conn = self._db()
        conn.execute("BEGIN")
        try:
            used, files, fired, reserved, reserved_files = self._state(conn)
            (reconciled,) = conn.execute("SELECT reconciled_at FROM usage").fetchone()
        finally:
            conn.execute("COMMIT")
        free = None if self.max_bytes is None else max(0, self.max_bytes - used - reserved)
        return {
            "used": used, "reserved": reserved, "files": files, "reserved_files": reserved_files,
            "max_bytes": self.max_bytes, "max_file_size": self.max_file_size,
            "max_files": self.max_files, "free": free,
            "percent": None if not self.max_bytes else 100.0 * used / self.max_bytes,
            "thresholds": list(self.thresholds),
            "thresholds_crossed": [t for i, t in enumerate(self.thresholds) if fired & (1 << i)],
            "reconciled_at": reconciled, "db_path": self.db_path, "target": self.target_id,
        }

    def stats(self) -> dict:
        """Usage and limits for ``aiofs overview`` (the duck-typed ``stats()`` of a layer).

        ``used``/``reserved``/``free``/``files`` and the limits, ``usage_percentage``
        (``None`` when unlimited), the alert thresholds, and ``counts``: ``"logical"``
        bytes above other layers, ``"stored"`` with ``count_internal=True``.
        """
        u = self.usage()
        return {
            "used": u["used"], "reserved": u["reserved"], "free": u["free"], "files": u["files"],
            "max_bytes": u["max_bytes"], "max_file_size": u["max_file_size"],
            "max_files": u["max_files"], "usage_percentage": u["percent"],
            "thresholds": u["thresholds"], "thresholds_crossed": u["thresholds_crossed"],
            "counts": "stored" if self.count_internal else "logical",
            "reconciled_at": u["reconciled_at"],
        }

    def statfs(self) -> dict:
        """Filesystem statistics for the mount (``df``): bytes and file counts."""
        u = self.usage()
        used = u["used"] + u["reserved"]
        total = self.max_bytes if self.max_bytes is not None else max(used, 1 << 60)
        files_total = self.max_files if self.max_files is not None else None
        return {
            "total": total, "used": used, "free": max(0, total - used),
            "files": u["files"], "files_total": files_total,
            "files_free": None if files_total is None else max(0, files_total - u["files"]),
            "max_file_size": self.max_file_size,
        }

    def on_alert(self, callback: Callable[[dict], None]) -> Callable[[dict], None]:
        """Call ``callback(event)`` when a threshold is crossed in this process."""
        self._callbacks.append(callback)
        return callback

    def alerts(self, limit: int | None = None) -> list[dict]:
        """Threshold crossings recorded by any process, newest first."""
        self.flush()
        sql = "SELECT id, threshold, crossed_at, used, max_bytes, path FROM alerts ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        keys = ("id", "threshold", "crossed_at", "used", "max_bytes", "path")
        return [dict(zip(keys, row)) for row in self._db().execute(sql)]

    def file_sizes(self) -> dict[str, int]:
        """The per-file sizes the quota knows (what ``used`` sums)."""
        self.flush()
        return dict(self._db().execute("SELECT path, size FROM files"))

    # -- writes ------------------------------------------------------------------------------------

    def open(self, path, mode="rb", block_size=None, cache_options=None, compression=None, **kwargs):
        if mode == "wb" and block_size is None and compression is None and not kwargs \
                and not self._intrans:
            # the hot path of small writes: fsspec's open has nothing to add to it, and a
            # plain counted path on an atomic target needs none of _open's checks
            if self._fast_keys and self._atomic_target and _plain_key(path):
                return SmallFileWriter(self, path)
            return self._open(self._strip_protocol(path), mode)
        return super().open(path, mode, block_size=block_size, cache_options=cache_options,
                            compression=compression, **kwargs)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "r" in mode and "+" not in mode:
            return super()._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                                 cache_options=cache_options, **kwargs)
        refuse_internal_write(path)
        if not self._counted(path):
            return self.fs._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                                 cache_options=cache_options, **kwargs)
        key = self._key(path)
        atomic = self._atomic_target
        existed = atomic or self.fs.isfile(path)
        initial = self.fs.size(path) if "a" in mode and existed else 0

        def open_target():
            return self.fs._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                                 cache_options=cache_options, **kwargs)

        if mode == "wb" and atomic and autocommit and block_size is None and not kwargs:
            # An atomic target shows nothing of a write before its close: a file that ends
            # within the buffer goes down as one pipe_file at close (cheaper than a target
            # file opened, written and closed); the target file opens only past the buffer.
            return QuotaWriter(self, path, key, None, initial=0, existed=True, opener=open_target)
        return QuotaWriter(self, path, key, open_target(), initial=initial, existed=existed)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        # _plain_key inlined (a call costs here: this is the hot path of small writes)
        if self._fast_keys and type(path) is str and path[:1] == "/" and path[-1] != "/" \
                and "/." not in path and "//" not in path and ":" not in path \
                and "\\" not in path and "\x00" not in path:
            key = path
        else:
            refuse_internal_write(path)
            if not self._counted(path):
                return self.fs.pipe_file(path, value, mode=mode, **kwargs)
            key = self._key(path)
        size = len(value)
        # _charge_one's lease path and _written's test inlined: on this hot path each call
        # costs several microseconds when the CPU comes back cold from the last fsync
        token = None
        with self._lease_lock:
            if (size <= self._lease_left and self.max_files is None
                    and (self.max_file_size is None or size <= self.max_file_size)):
                self._lease_left -= size
                pending = self._pending
                token = ("lease", key, size, pending.get(key, _MISSING))
                pending[key] = size
        if token is None:
            token = self._charge_one(key, size)
        try:
            if kwargs or mode != "overwrite":
                result = self.fs.pipe_file(path, value, mode=mode, **kwargs)
            else:  # the common call, without building keyword arguments
                result = self.fs.pipe_file(path, value)
        except BaseException:
            self._refund(token)
            raise
        if token[0] == "lease" and (
                len(self._pending) >= LEASE_FLUSH_FILES
                or time.monotonic() - self._pending_since > LEASE_FLUSH_SECONDS):
            self._written(token)
        return result

    def pipe(self, path, value=None, **kwargs):
        if isinstance(path, str):
            path = {path: value}
        if self._fast_keys and _all_plain_keys(path):
            # the common bulk write: every key is already the target's (checked at once)
            items = dict(zip(path, map(len, path.values())))
        else:
            prefix = f"{self.protocol}://"
            if any(isinstance(k, str) and k.startswith(prefix) for k in path):
                path = {type(self)._strip_protocol(k) if isinstance(k, str)
                        and k.startswith(prefix) else k: v for k, v in path.items()}
            items = {}
            for p, v in path.items():
                if type(p) is not str or INTERNAL_DIR in p:
                    refuse_internal_write(p)
                    if not self._counted(p):
                        continue
                items[self._key(p)] = len(v)
        if len(items) >= BATCH_MIN_FILES:
            if self._take_from_lease(items):
                return self._pipe_on_lease(path, **kwargs)
            return self._pipe_big(path, items, **kwargs)
        olds = self._charge(items)
        try:
            return self.fs.pipe(path, **kwargs)
        except BaseException:
            self._refund(olds)
            self._resync(list(path))  # a bulk write may have landed in part
            raise

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        refuse_internal_write(rpath)
        if os.path.isdir(lpath) or not self._counted(rpath):
            return self.fs.put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)
        olds = self._charge({self._key(rpath): os.path.getsize(lpath)})
        try:
            result = self.fs.put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)
        except BaseException:
            self._refund(olds)
            raise
        self._written(olds)
        return result

    def cp_file(self, path1, path2, **kwargs):
        refuse_internal_write(path2)
        entry = self.info(path1)
        if entry.get("type") == "directory" or not self._counted(path2):
            return self.fs.cp_file(path1, path2, **kwargs)
        olds = self._charge({self._key(path2): int(entry.get("size") or 0)})
        try:
            result = self.fs.cp_file(path1, path2, **kwargs)
        except BaseException:
            self._refund(olds)
            raise
        self._written(olds)
        return result

    def touch(self, path, truncate=True, **kwargs):
        refuse_internal_write(path)
        if truncate or not self.fs.exists(path):
            return self.pipe_file(path, b"")
        return self.fs.touch(path, truncate=False, **kwargs)

    # -- deletes and renames: give space back --------------------------------------------------

    def rm_file(self, path):
        super().rm_file(path)
        self._settle_lease()
        key = self._key(path)
        with self._tx() as conn:
            self._set_file(conn, key, None, self._old_size(conn, key))
            self._alerts_in_tx(conn, None)

    def rm(self, path, recursive=False, maxdepth=None):
        paths = path if isinstance(path, list) else [path]
        touched = []
        for p in paths:
            p = self._strip_protocol(p)
            touched.extend(self.expand_path(p) if has_glob(p) else [p])
        try:
            return super().rm(path, recursive=recursive, maxdepth=maxdepth)
        finally:
            self._resync(touched)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        if isinstance(path1, list) or has_glob(path1) or maxdepth is not None:
            # copy + delete through this layer: both are accounted
            return AbstractFileSystem.mv(self, path1, path2, recursive=recursive,
                                         maxdepth=maxdepth, **kwargs)
        src = self._strip_protocol(path1)
        dest = self._strip_protocol(path2)
        # A rename never adds bytes: no check, only the bookkeeping follows the files.
        if self.fs.isdir(src):
            touched = [src, dest]  # a directory: re-read both trees, whatever mv did
        elif self.fs.isdir(dest):
            touched = [src, posixpath.join(dest, posixpath.basename(src.rstrip("/")))]
        else:
            touched = [src, dest]
        try:
            return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        finally:
            self._resync(touched)


class QuotaWriter(WriteOnlyFile, io.BufferedIOBase):
    """A file being written through :class:`Quota`: counts bytes, reserves, fails early.

    The first ``STREAM_BUFFER`` bytes stay in memory; a file that ends within them is
    charged in one transaction at ``close`` (before its bytes are handed to the target).
    Without a ``target``, the target file is opened (by ``opener``, or as a plain ``wb``
    file) only when the buffer is left, and a file that ends within it goes down as one ``pipe_file``: errors
    of the target (a directory in the way) then surface at ``close``, with nothing stored.
    Past that, space is reserved in growing chunks before bytes go down. A ``write`` that
    would cross ``max_file_size`` or the quota raises before any of its bytes go down, and
    the target file is discarded.
    """

    SEEKABLE = True

    # Starting values as class attributes: a writer is made per small file, and every
    # attribute set in __init__ costs (io.BufferedIOBase.__init__ does nothing we need).
    _pos = 0               # position relative to the start of our writes
    _size = 0              # bytes of the file beyond ``initial``
    _reservation: int | None = None  # row id
    _reserved = 0          # bytes covered by the reservation (size, beyond the credit)
    _credit = 0
    _done = False
    _opener: Callable[[], Any] | None = None

    def __init__(self, quota: Quota, path: str, key: str, target, initial: int, existed: bool,
                 opener: Callable[[], Any] | None = None):
        self.quota, self.path, self.key, self.target = quota, path, key, target
        if opener is not None:
            self._opener = opener
        self.initial = initial  # bytes already in the file (append mode)
        self.existed = existed
        self._buffer: bytearray | None = bytearray()

    # -- io.BufferedIOBase ---------------------------------------------------------------------

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._unbuffer(self._size)
        self._pos = self._open_target().seek(offset, whence) - self.initial
        return self._pos

    def write(self, data) -> int:
        if self._pos == self._size and not self._done:
            # the hot paths, checks as in _write inlined: a small file appends to the buffer;
            # a stream appends to the target within its reservation (which _grow keeps
            # within max_file_size)
            n = len(data) if type(data) is bytes else memoryview(data).nbytes
            new_size = self._size + n
            buffer = self._buffer
            if buffer is not None:
                limit = self.quota.max_file_size
                if new_size <= STREAM_BUFFER and (limit is None or self.initial + new_size <= limit):
                    buffer += data
                    self._pos = self._size = new_size
                    return n
            elif new_size <= self._reserved and n:
                self.target.write(data)
                self._pos = self._size = new_size
                return n
        return self._write(data)

    def _write(self, data) -> int:
        if self._done:
            raise ValueError("I/O operation on closed file")
        view = memoryview(data).cast("B")
        n = len(view)
        if not n:
            return 0
        new_size = max(self._size, self._pos + n)
        if new_size > self._size:
            try:
                self.quota._check_file_size(self.key, self.initial + new_size)
                if self._buffer is not None and new_size <= STREAM_BUFFER and self._pos == self._size:
                    self._buffer += view
                    self._pos = self._size = new_size
                    return n
                self._unbuffer(new_size)
                if new_size > self._reserved:
                    self._grow(new_size)
            except BaseException:
                self.discard()
                raise
        self.target.write(view)
        self._pos += n
        self._size = new_size
        return n

    def flush(self) -> None:
        if self._buffer is None and not self._done:
            self.target.flush()

    # -- reservations ------------------------------------------------------------------------

    def _open_target(self):
        if self.target is None:
            opener = self._opener
            self.target = opener() if opener else self.quota.fs._open(self.path, mode="wb")
        return self.target

    def _unbuffer(self, need: int) -> None:
        """Leave buffered mode: reserve, then hand the buffered bytes to the target."""
        if self._buffer is None:
            return
        self._grow(max(need, len(self._buffer)))
        data = self._buffer
        target = self._open_target()
        self._buffer = None
        if data:
            target.write(data)

    def _grow(self, need: int) -> None:
        q = self.quota
        first = self._reservation is None
        step = min(max(self._reserved, MIN_RESERVATION), MAX_RESERVATION)
        now = time.time()
        if first:
            q._settle_lease()
        with q._tx() as conn:
            if not first:  # this stream's own reservation counts as free while it is resized
                conn.execute("UPDATE reservations SET bytes = 0 WHERE id = ?", (self._reservation,))
            share = q._share_of_free(conn, MAX_RESERVATION)
            if first:
                # far from the limit, the first chunk is as large as a lease may be (most
                # files then take this one reservation)
                step = max(step, share)
            # near the limit no chunk reaches further ahead of the bytes than a sixteenth of
            # the free space: a writer's reservation must not refuse another writer's file
            step = min(step, max(share, STREAM_BUFFER))
            want = max(need, self._reserved + step)
            if q.max_file_size is not None:
                want = min(want, max(need, q.max_file_size - self.initial))
            if first:
                old = q._old_size(conn, self.key)
                self._credit = q._credit(conn, self.key, old) if not self.initial else 0
                new_file = 0 if old is not None else 1
                try:
                    q._check(conn, self.key, want - self._credit, new_file)
                except StorageQuotaExceeded:
                    want = need
                    q._check(conn, self.key, want - self._credit, new_file)
                cursor = conn.execute(
                    "INSERT INTO reservations (path, bytes, new_file, credit, pid, host, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.key, max(0, want - self._credit), new_file, self._credit,
                     os.getpid(), _HOST, now, now))
                self._reservation = cursor.lastrowid
            else:
                try:
                    q._check(conn, self.key, want - self._credit, 0)
                except StorageQuotaExceeded:
                    want = need
                    q._check(conn, self.key, want - self._credit, 0)
                conn.execute("UPDATE reservations SET bytes = ?, updated_at = ? WHERE id = ?",
                             (max(0, want - self._credit), now, self._reservation))
        self._reserved = want

    def _release(self) -> None:
        if self._reservation is not None:
            rid, self._reservation = self._reservation, None
            with self.quota._tx() as conn:
                conn.execute("DELETE FROM reservations WHERE id = ?", (rid,))

    # -- end of the write -----------------------------------------------------------------------

    def close(self) -> None:
        if self._done:
            return
        q, total = self.quota, self.initial + self._size
        if self._buffer is not None:  # small file: one charge, then the bytes go down
            try:
                olds = q._charge_one(self.key, total)
            except BaseException:
                self.discard()
                raise
            try:
                if self.target is None:
                    q.fs.pipe_file(self.path, bytes(self._buffer))
                else:
                    if self._buffer:
                        self.target.write(self._buffer)
                    self.target.close()
                self._buffer = None
            except BaseException:
                self._done = True
                q._refund(olds)
                super().close()
                raise
            self._done = True
            super().close()
            q._written(olds)
            return
        self._done = True
        try:
            self.target.close()
        except BaseException:
            self._release()
            super().close()
            raise
        with q._tx() as conn:
            if self._reservation is not None:
                conn.execute("DELETE FROM reservations WHERE id = ?", (self._reservation,))
                self._reservation = None
            q._set_file(conn, self.key, total, q._old_size(conn, self.key))
            events = q._alerts_in_tx(conn, self.key)
        q._fire(events)
        super().close()

    def discard(self) -> None:
        """Abandon the write: the target drops its temporary data, the reservation goes."""
        if self._done:
            return
        self._done = True
        self._buffer = None
        try:
            if self.target is None:
                return  # nothing was handed to the target
            discard = getattr(self.target, "discard", None)
            if discard is not None:
                discard()
            else:
                self.target.close()
            if not self.existed:
                # Targets that create the object at open (fsspec's memory filesystem) keep
                # a partial file: remove it. Atomic targets have nothing there.
                with contextlib.suppress(OSError):
                    if self.quota.fs.isfile(self.path):
                        self.quota.fs.rm_file(self.path)
        finally:
            self._release()
            super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self):
        # Never commit from the garbage collector: an unclosed writer is abandoned.
        if not self._done:
            try:
                self.discard()
            except Exception:
                pass


class SmallFileWriter(WriteOnlyFile):
    """What ``Quota.open(path, 'wb')`` returns for a plain path on an atomic target.

    A file that ends within ``STREAM_BUFFER`` bytes stays in memory and goes down as one
    ``pipe_file`` at ``close``, charged just before (errors of the target, such as a
    directory in the way, surface at ``close`` with nothing stored or charged). Anything
    else (a write past the buffer or over ``max_file_size``, a seek, any other file method)
    hands over to a :class:`QuotaWriter` holding what was written so far, which then does
    everything. Not an ``io.IOBase`` subclass (registered as a virtual one): a small write
    is made of nothing but this object, which costs a fraction of an ``io`` subclass (the
    hot path of per-file writes, where the CPU comes back cold from each fsync). No
    finalizer: an abandoned, unclosed small file leaves nothing behind.
    """

    SEEKABLE = True

    __slots__ = ("quota", "path", "_buffer", "_closed", "_full")

    def __init__(self, quota: Quota, path: str):
        self.quota, self.path = quota, path
        self._buffer = bytearray()
        self._closed = False
        self._full: QuotaWriter | None = None

    def _hand_over(self) -> QuotaWriter:
        """The full writer, holding what was written so far (made on first need)."""
        if self._full is None:
            if self._closed:
                raise ValueError("I/O operation on closed file")
            full = QuotaWriter(self.quota, self.path, self.path, None, initial=0, existed=True)
            buffered, self._buffer = self._buffer, None
            self._full = full
            if buffered:
                full.write(buffered)
        return self._full

    def write(self, data) -> int:
        full = self._full
        if full is not None:
            return full.write(data)
        buffer = self._buffer
        if buffer is not None and not self._closed:
            n = len(data) if type(data) is bytes else memoryview(data).nbytes
            size = len(buffer) + n
            limit = self.quota.max_file_size
            if size <= STREAM_BUFFER and (limit is None or size <= limit):
                buffer += data
                return n
        return self._hand_over().write(data)

    def close(self) -> None:
        """Charge the file and hand it to the target in one ``pipe_file``."""
        if self._full is not None:
            return self._full.close()
        if self._closed:
            return
        self._closed = True
        data, self._buffer = self._buffer, None
        q = self.quota
        token = q._charge_one(self.path, len(data))
        try:
            q.fs.pipe_file(self.path, bytes(data))
        except BaseException:
            q._refund(token)
            raise
        q._written(token)

    def discard(self) -> None:
        """Abandon the write: nothing is stored or charged."""
        if self._full is not None:
            return self._full.discard()
        self._closed = True
        self._buffer = None

    def __enter__(self) -> SmallFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    @property
    def closed(self) -> bool:
        return self._full.closed if self._full is not None else self._closed

    def tell(self) -> int:
        if self._full is not None:
            return self._full.tell()
        if self._closed:
            raise ValueError("I/O operation on closed file")
        return len(self._buffer)

    def flush(self) -> None:
        if self._full is not None:
            return self._full.flush()
        if self._closed:
            raise ValueError("I/O operation on closed file")

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._hand_over().seek(offset, whence)

    def __getattr__(self, name: str):
        # every other file method (writelines, truncate, fileno, ...) is the full writer's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._hand_over(), name)


io.BufferedIOBase.register(SmallFileWriter)
