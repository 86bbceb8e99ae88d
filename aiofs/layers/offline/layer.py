"""``Offline``: a local write-back store with a journal, placed right above a remote backend.

Contract (issue 7; the format is in ``docs/formats/offline.md``):

* **Local view.** ``entries`` in ``CACHE_DIR/local_storage.db`` (SQLite, WAL) hold the
  metadata of every path seen, merged with local edits. ``ls``/``info``/``find`` answer from
  it: instantly, and offline too. While online, an entry or a listing older than
  ``revalidate_after`` seconds is checked against the remote (its stamp: etag/mtime/inode)
  before use; ``invalidate_cache()`` marks everything stale (never forgotten: offline, stale
  metadata is still served). A path or directory with queued operations is never
  refreshed from the remote: the local view is the truth until they are uploaded.
* **Reads** come from the local store when cached; misses are fetched whole (files up to
  ``whole_file_limit``) or by ``block_size`` blocks (larger files: a range read fetches only
  its blocks, into a sparse local file) and cached. Offline and not cached: ``SYNC_FAILED``
  naming the file.
* **Writes** land in the local store, fsynced, before the journal commit that references
  them, and return at local speed. Deletes, renames and mkdirs are journaled operations too.
  A write replaces a queued, not yet started upload of the same path (coalescing); a write
  then a delete of a file the remote never had leaves nothing to do.
* **Syncer** (``syncer.py``): one thread per process, one process per cache directory at a
  time (a file lock), applies ``ops`` in order with capped exponential backoff and jitter;
  runs of uploads to distinct paths go down as one bulk ``put`` (concurrent on async
  targets). An operation is deleted from the journal in the transaction that records its
  result; one interrupted half way is recognised at its retry (the remote already holds the
  same bytes), so no operation is applied twice and no conflicted copy is made of our own
  upload.
* **Online/offline.** A connection-kind error (``ConnectionError``, ``TimeoutError``, botocore
  / aiohttp connection errors) that survives ``foreground_retries`` quick retries switches to
  offline; a probe every ``probe_interval`` seconds switches back. While in use, a heartbeat
  probe every ``heartbeat_interval`` seconds notices a lost connection even when idle.
* **Conflicts** (``conflicts.py``): an upload whose base stamp is not what the remote holds.
  ``keep-both`` (default) uploads the edit as ``name (conflicted copy DATE TIME HOST).ext``.
* **Eviction.** Clean data (no queued operation references it, not pinned) is evicted LRU
  above ``max_cache_bytes`` and when not read for ``max_age_days``. Dirty data is never
  evicted; when queued uploads alone reach ``max_cache_bytes`` a write waits up to
  ``quota_wait`` seconds for the syncer, then fails with ``STORAGE_QUOTA_EXCEEDED``.
* **Status.** :meth:`Offline.status` and ``aiofs status``; :meth:`Offline.sync` and
  ``aiofs sync [--wait]``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import io
import os
import posixpath
import random
import re
import shutil
import socket
import threading
import time
import weakref
from typing import Any

import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from aiofs.errors import (
    AiofsError, DirectoryNotEmpty, InvalidArgument, IsADirectory, NotADirectory, NotFound,
    StorageQuotaExceeded, SyncFailed,
)
from aiofs.layer import (
    INTERNAL_DIR, Layer, has_glob, hide_internal_path, internal_access, internals_visible,
    WriteOnlyFile, is_internal, refuse_internal_write, stamp_of, target_identity,
    visible_entries,
)
from aiofs.layers.offline import conflicts as conflict_rules
from aiofs.layers.offline.journal import DB_NAME, Journal, like_prefix
from aiofs.layers.offline.store import Store

__all__ = ["Offline", "is_connection_error", "parse_size"]

GIB = 1 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
STALE = 1.0  # `dirs.listed` of a complete listing that must be re-checked before use
# `entries.stamp` of a directory made here only as the parent of a queued write or move: the
# remote gets it as a side effect of that operation, and not at all if the operation is
# coalesced away. An explicit makedirs of such a directory queues a mkdir of its own.
LOCAL_ONLY = "@local"
ACCESS_GRANULARITY = 60.0  # seconds: a read updates `accessed` at most this often
_CONNECTION_NAMES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError",
    "ServerTimeoutError", "ProxyConnectionError",
})
_LIVE: list[weakref.ref] = []


@atexit.register
def _close_all() -> None:
    for ref in list(_LIVE):
        layer = ref()
        if layer is not None:
            with contextlib.suppress(Exception):
                layer.close()


def parse_size(value: Any, name: str) -> int:
    """Bytes from an int or a string such as ``"5GB"`` (K/M/G/T are powers of 1024)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a size, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise InvalidArgument(f"{name}: cannot read {value!r} as a size (e.g. 5GB, 1048576)")


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "the remote cannot be reached" (not "the remote said no")."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, AiofsError) and exc.code in ("BACKEND_UNAVAILABLE", "TIMEOUT"):
        return True
    return any(cls.__name__ in _CONNECTION_NAMES for cls in type(exc).__mro__)


def _when(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _remote_times(entry: dict) -> tuple[float, float]:
    mtime = None
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "modifiedTime"):
        mtime = _when(entry.get(key))
        if mtime is not None:
            break
    created = None
    for key in ("created", "timeCreated", "createdTime"):
        created = _when(entry.get(key))
        if created is not None:
            break
    now = time.time()
    mtime = mtime if mtime is not None else (created if created is not None else now)
    return mtime, created if created is not None else mtime


class _BlobReader(io.BufferedReader):
    """A cached file opened for reading: a plain local file (local read speed)."""

    def __init__(self, path: str, name: str, size: int):
        super().__init__(io.FileIO(path, "rb"), buffer_size=1 << 20)
        self.path = name
        self.size = size


class _RangeFile(AbstractBufferedFile):
    """A partially cached file opened for reading: blocks are fetched and cached on demand."""

    def __init__(self, fs: "Offline", path: str, size: int, block_size: int):
        super().__init__(fs, path, mode="rb", block_size=block_size, size=size,
                         cache_type="none")

    def _fetch_range(self, start, end):
        return self.fs._read_range(self.path, start, end)


class _WriteFile(WriteOnlyFile, io.BufferedIOBase):
    """A file opened for writing: bytes go to a local temp file; ``close`` commits it to the
    journal (durable before it returns), ``discard`` (or leaving ``with`` by an exception)
    drops it."""

    def __init__(self, fs: "Offline", key: str, prefix: bytes = b""):
        super().__init__()
        self.fs = fs
        self.path = key
        self._temp, self._f = fs._store.temp()
        self._size = 0
        if prefix:
            self.write(prefix)

    def tell(self) -> int:
        return self._size

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed file")
        n = self._f.write(data)
        self._size += n
        return n

    def flush(self) -> None:
        if not self.closed and not self._f.closed:
            self._f.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.fs._reserve(self._size, self.path)
            blob = self.fs._store.publish(self._temp, self._f, durable=self.fs.fsync)
            self.fs._commit_files([(self.path, blob, self._size)])
        except BaseException:
            self._f.close()
            self.fs._store.drop_temp(self._temp)
            raise
        finally:
            super().close()

    def discard(self) -> None:
        """Abandon the write: nothing is stored or queued."""
        if self.closed:
            return
        self._f.close()
        self.fs._store.drop_temp(self._temp)
        super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.discard()

    @property
    def size(self) -> int:
        return self._size


class Offline(Layer):
    """Local write-back store + SQLite journal + LRU read cache over a remote filesystem.

    ``Offline(fs=remote, cache_dir=PATH)``. Options (plain data): ``max_cache_bytes``
    (``"5GB"``), ``max_age_days`` (30), ``revalidate_after`` (seconds, 60),
    ``conflict_policy`` (``keep-both`` | ``newer-wins`` | ``local-wins`` | ``remote-wins``),
    ``probe_interval`` (0.5 s), ``heartbeat_interval`` (0.5 s), ``retry_base`` (0.05 s),
    ``retry_cap`` (30 s), ``foreground_retries`` (4), ``max_attempts`` (8, then an operation
    is parked in state ``error``), ``whole_file_limit`` (``"16MiB"``), ``block_size``
    (``"1MiB"``), ``quota_wait`` (30 s), ``batch_files`` (512), ``batch_bytes`` (``"1GiB"``),
    ``fsync`` (True), ``syncer`` (True: run the background syncer), ``host`` (for conflicted
    copy names; default the host name).
    """

    protocol = "aiofs-offline"

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict | None = None,
        cache_dir: str | None = None,
        max_cache_bytes: int | str = "5GB",
        max_age_days: float = 30.0,
        revalidate_after: float = 60.0,
        conflict_policy: str = conflict_rules.KEEP_BOTH,
        probe_interval: float = 0.5,
        heartbeat_interval: float = 0.5,
        retry_base: float = 0.05,
        retry_cap: float = 30.0,
        foreground_retries: int = 4,
        max_attempts: int = 8,
        whole_file_limit: int | str = "16MiB",
        block_size: int | str = "1MiB",
        quota_wait: float = 30.0,
        batch_files: int = 512,
        batch_bytes: int | str = "1GiB",
        fsync: bool = True,
        syncer: bool = True,
        host: str | None = None,
        **options: Any,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options,
                         **options)
        self.max_cache_bytes = parse_size(max_cache_bytes, "max_cache_bytes")
        self.max_age_days = float(max_age_days)
        self.revalidate_after = float(revalidate_after)
        self.conflict_policy = conflict_rules.check_policy(conflict_policy)
        self.probe_interval = float(probe_interval)
        self.heartbeat_interval = float(heartbeat_interval)
        self.retry_base = float(retry_base)
        self.retry_cap = float(retry_cap)
        self.foreground_retries = max(1, int(foreground_retries))
        self.max_attempts = max(1, int(max_attempts))
        self.whole_file_limit = parse_size(whole_file_limit, "whole_file_limit")
        self.block_size = max(4096, parse_size(block_size, "block_size"))
        self.quota_wait = float(quota_wait)
        self.batch_files = max(1, int(batch_files))
        self.batch_bytes = parse_size(batch_bytes, "batch_bytes")
        self.fsync = bool(fsync)
        self.host = host or socket.gethostname().split(".")[0] or "host"
        if min(self.revalidate_after, self.probe_interval, self.heartbeat_interval,
               self.retry_base, self.retry_cap, self.quota_wait, self.max_age_days) < 0:
            raise InvalidArgument("intervals, waits and ages must not be negative")
        self.target_id = target_identity(self.fs)
        if cache_dir is None:
            cache_dir = self.default_cache_dir(self.target_id)
        self.cache_dir = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
        os.makedirs(self.cache_dir, exist_ok=True)
        self._store = Store(self.cache_dir)
        self._journal = Journal(os.path.join(self.cache_dir, DB_NAME))
        self.online = True
        self.offline_since: float | None = None
        self.last_error: str | None = None
        # counts switches to offline: an answer to a call made before the latest switch is
        # older news than the failure behind it and must not switch back online
        self._offline_switches = 0
        self._probe_path = ""
        self._last_activity = 0.0
        self._state_lock = threading.Lock()
        self._closed = False
        from aiofs.layers.offline.syncer import Syncer  # the syncer needs this module

        self._syncer = Syncer(self)
        _LIVE[:] = [r for r in _LIVE if r() is not None]
        _LIVE.append(weakref.ref(self))
        if syncer:
            self._syncer.start()

    @staticmethod
    def default_cache_dir(target_id: str) -> str:
        """``$LOCAL_STORAGE_PATH/.offline/<target>`` (else the user data dir's ``storage``)."""
        base = os.environ.get("LOCAL_STORAGE_PATH")
        if not base:
            import platformdirs

            base = str(platformdirs.user_data_path("aiofs") / "storage")
        digest = hashlib.sha256(target_id.encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", target_id).strip("-")[-40:]
        return os.path.join(os.path.expanduser(base), ".offline", f"{slug}-{digest}")

    def __repr__(self) -> str:
        return f"Offline({self.fs!r})" if isinstance(self.fs, Layer) else super().__repr__()

    # -- paths -----------------------------------------------------------------------------

    def _key(self, path) -> str:
        return self._strip_protocol(path)

    def _parent(self, key: str) -> str:
        return self.fs._strip_protocol(posixpath.dirname(key))

    @staticmethod
    def _is_root(key: str) -> bool:
        return key in ("", "/")

    def _ancestors(self, key: str) -> list[str]:
        out = []
        while not self._is_root(key):
            key = self._parent(key)
            out.append(key)
        return out

    def _touch_activity(self) -> None:
        self._last_activity = time.monotonic()

    # -- remote calls ----------------------------------------------------------------------

    def _forget_target_cache(self, key: str) -> None:
        """We ask the remote only when we want its current state: drop the target's own
        listings cache (s3fs, gcsfs keep one) first."""
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(key)

    def _remote(self, fn, *args, what: str = "", **kwargs):
        """Call the remote, retrying connection-kind errors; ``SYNC_FAILED`` when unreachable.

        Online: ``foreground_retries`` attempts with short jittered backoff (a flaky network
        is not an outage). Offline: one attempt, which switches back online if it works.
        """
        attempts = self.foreground_retries if self.online else 1
        last: BaseException | None = None
        for attempt in range(attempts):
            asked_at = self._offline_switches
            try:
                # the local view holds internal data too (layers above keep theirs under
                # .aiofs/); this layer hides it from its own callers
                with internal_access():
                    result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_connection_error(exc):
                    # it answered, if with an error: the network is there
                    self.set_online(True, asked_at=asked_at)
                    raise
                last = exc
                if attempt + 1 < attempts:
                    time.sleep(min(self.retry_cap, self.retry_base * (2 ** attempt))
                               * random.uniform(0.5, 1.0))
                continue
            if what:
                self._probe_path = what
            self.set_online(True, asked_at=asked_at)
            return result
        self.set_online(False, last)
        raise SyncFailed(f"offline: the remote cannot be reached for {what!r} ({last})",
                         what or None) from last

    def set_online(self, online: bool, error: BaseException | None = None,
                   asked_at: int | None = None) -> None:
        """Record a switch between online and offline (the syncer is woken when back).

        ``asked_at``: for an answer, the switch count when its call started; an answer to a
        call started before the layer last went offline does not switch it back (a call in
        flight when the cable was pulled may still return).
        """
        with self._state_lock:
            if online == self.online:
                return
            if online and asked_at is not None and asked_at != self._offline_switches:
                return
            self.online = online
            if online:
                self.offline_since = None
            else:
                self._offline_switches += 1
                self.offline_since = time.time()
                self.last_error = f"{type(error).__name__}: {error}" if error else None
        if online:
            with contextlib.suppress(Exception):
                self._journal.db().execute("UPDATE ops SET next_try = 0 WHERE state != 'error'")
            self._syncer.kick()

    def probe(self, attempts: int = 5) -> bool:
        """Ask the remote whether it is reachable (``attempts`` quick tries); records the
        outcome and returns it."""
        last = None
        for attempt in range(attempts):
            asked_at = self._offline_switches
            try:
                self.fs.info(self._probe_path)
            except FileNotFoundError:
                pass
            except Exception as exc:
                if not is_connection_error(exc):
                    break  # it answered, even if with an error: the network is there
                last = exc
                if attempt + 1 < attempts:
                    time.sleep(0.02 * (attempt + 1))
                continue
            self.set_online(True, asked_at=asked_at)
            return self.online
        if last is None:
            self.set_online(True, asked_at=asked_at)
            return self.online
        self.set_online(False, last)
        return False

    # -- journal helpers -------------------------------------------------------------------

    def _row(self, conn, key: str):
        return conn.execute("SELECT * FROM entries WHERE path = ?", (key,)).fetchone()

    def _dir_row(self, conn, key: str):
        return conn.execute("SELECT * FROM dirs WHERE path = ?", (key,)).fetchone()

    def _dir_version(self, conn, key: str) -> int:
        row = self._dir_row(conn, key)
        return row["version"] if row else 0

    def _bump(self, conn, keys) -> None:
        """Mark directories changed (a listing taken before this must not be merged)."""
        seen = set()
        for key in keys:
            for d in [self._parent(key), *self._ancestors(self._parent(key))] if not self._is_root(key) else [key]:
                if d in seen:
                    continue
                seen.add(d)
                conn.execute("INSERT INTO dirs (path, listed, version) VALUES (?, 0, 1) "
                             "ON CONFLICT(path) DO UPDATE SET version = version + 1", (d,))

    def _pending_on(self, conn, key: str) -> bool:
        """Queued operations name ``key`` (as source or destination) or a tree above it."""
        if conn.execute("SELECT 1 FROM ops WHERE path = ? OR path2 = ? LIMIT 1",
                        (key, key)).fetchone():
            return True
        return self._tree_op_above(conn, key)

    def _tree_op_above(self, conn, key: str, after: int | None = None,
                       before: int | None = None) -> bool:
        """A queued delete or move (either end) of a directory above ``key``, queued after
        operation ``after`` and before operation ``before`` (each bound optional)."""
        ancestors = self._ancestors(key)
        if not ancestors:
            return False
        marks = ",".join("?" * len(ancestors))
        return conn.execute(
            f"SELECT 1 FROM ops WHERE kind IN ('rmtree', 'mvtree') AND (path IN ({marks}) OR "
            f"path2 IN ({marks})) AND (? IS NULL OR seq > ?) AND (? IS NULL OR seq < ?) LIMIT 1",
            (*ancestors, *ancestors, after, after, before, before)).fetchone() is not None

    def _protected(self, conn, key: str) -> bool:
        """Queued operations touch ``key``, something below it, or a tree above it: the
        local view of ``key`` is the truth until they are uploaded."""
        return self._pending_on(conn, key) or bool(self._pending_under(conn, key))

    def _pending_under(self, conn, key: str) -> list[str]:
        """Paths named by queued operations at or below ``key``."""
        if self._is_root(key):
            rows = conn.execute("SELECT path, path2 FROM ops").fetchall()
        else:
            pattern = like_prefix(key)
            rows = conn.execute(
                "SELECT path, path2 FROM ops WHERE path = ? OR path2 = ? OR path LIKE ? ESCAPE '\\' "
                "OR path2 LIKE ? ESCAPE '\\'", (key, key, pattern, pattern)).fetchall()
        out = []
        for row in rows:
            for p in (row["path"], row["path2"]):
                if p is not None and (self._is_root(key) or p == key or p.startswith(key + "/")):
                    out.append(p)
        return out

    def _unreferenced(self, conn, names) -> list[str]:
        out = []
        for name in set(n for n in names if n):
            if conn.execute("SELECT 1 FROM entries WHERE blob = ? LIMIT 1", (name,)).fetchone():
                continue
            if conn.execute("SELECT 1 FROM ops WHERE blob = ? LIMIT 1", (name,)).fetchone():
                continue
            conn.execute("DELETE FROM blocks WHERE blob = ?", (name,))
            out.append(name)
        return out

    def _entry(self, row) -> dict:
        return {"name": row["path"], "size": row["size"], "type": row["type"],
                "mtime": row["mtime"], "created": row["created"]}

    def _root_entry(self, key: str) -> dict:
        return {"name": key, "size": 0, "type": "directory", "mtime": 0.0, "created": 0.0}

    def _upsert_remote(self, conn, key: str, entry: dict, now: float) -> list[str]:
        """Merge one remote entry into the local view; returns blobs no longer needed."""
        kind = "directory" if entry.get("type") == "directory" else "file"
        stamp = stamp_of(entry)
        mtime, created = _remote_times(entry)
        size = int(entry.get("size") or 0) if kind == "file" else 0
        row = self._row(conn, key)
        released = []
        if row is not None and row["type"] == kind and (kind == "directory" or (
                stamp is not None and row["stamp"] == stamp and row["size"] == size)):
            # the remote has it: a directory made here is no longer LOCAL_ONLY
            conn.execute("UPDATE entries SET validated = ?, mtime = ?, created = ?, stamp = ? "
                         "WHERE path = ?", (now, mtime, created, stamp, key))
            return released
        if row is not None:
            if row["type"] == "directory" and kind == "file":
                released += self._forget_tree(conn, key)
            released.append(row["blob"])
        conn.execute(
            "INSERT OR REPLACE INTO entries (path, parent, type, size, mtime, created, stamp, blob, "
            "cached, cached_bytes, dirty, validated, accessed) VALUES (?,?,?,?,?,?,?,NULL,'none',0,0,?,?)",
            (key, self._parent(key), kind, size, mtime, created, stamp, now,
             row["accessed"] if row is not None else 0.0))
        return released

    def _forget_tree(self, conn, key: str) -> list[str]:
        """Drop ``key`` and everything below it from the local view; returns their blobs."""
        pattern = like_prefix(key)
        blobs = [r["blob"] for r in conn.execute(
            "SELECT blob FROM entries WHERE (path = ? OR path LIKE ? ESCAPE '\\') AND blob IS NOT NULL",
            (key, pattern))]
        conn.execute("DELETE FROM entries WHERE path = ? OR path LIKE ? ESCAPE '\\'", (key, pattern))
        conn.execute("DELETE FROM dirs WHERE path LIKE ? ESCAPE '\\'", (pattern,))
        conn.execute("UPDATE dirs SET listed = 0 WHERE path = ?", (key,))
        return blobs

    def _finish(self, released) -> None:
        """Delete blobs a committed transaction released."""
        if released:
            self._store.remove(released)

    # -- metadata --------------------------------------------------------------------------

    def _fresh(self, stamp_time: float, now: float) -> bool:
        return not self.online or now - stamp_time < self.revalidate_after

    def _known_absent(self, conn, key: str, now: float) -> bool:
        """The local view proves ``key`` does not exist (a complete listing lacks it)."""
        cur = key
        while True:
            parent = self._parent(cur)
            prow = None if self._is_root(parent) else self._row(conn, parent)
            if prow is not None and prow["type"] == "file":
                return True
            d = self._dir_row(conn, parent)
            if d is not None and d["listed"] > 0 and (
                    self._fresh(d["listed"], now) or self._pending_on(conn, parent)
                    or self._pending_under(conn, parent)):
                return self._row(conn, cur) is None
            if prow is not None or self._is_root(parent) or parent == cur:
                return False
            cur = parent

    def _lookup(self, key: str):
        """The local view's entry for ``key`` (a row or a dict), revalidated when stale and
        online; ``None`` if it does not exist."""
        if self._is_root(key):
            return {"path": key, "type": "directory", "size": 0, "mtime": 0.0, "created": 0.0,
                    "blob": None, "cached": "none", "dirty": 0, "stamp": None}
        conn = self._journal.db()
        now = time.time()
        row = self._row(conn, key)
        if row is not None:
            if row["dirty"] or self._fresh(row["validated"], now):
                return row
            if row["type"] == "directory":
                d = self._dir_row(conn, key)
                if d is not None and d["listed"] > 0 and self._fresh(d["listed"], now):
                    return row
            if self._protected(conn, key):
                return row
        elif self._known_absent(conn, key, now) or self._protected(conn, key):
            return None
        # ask the remote; offline that is one attempt (it may be back, and "absent" is an
        # answer too), else SYNC_FAILED naming the path
        version = self._dir_version(conn, self._parent(key))
        self._forget_target_cache(key)
        try:
            entry = self._remote(self.fs.info, key, what=key)
        except FileNotFoundError:
            with self._journal.tx() as conn:
                if self._dir_version(conn, self._parent(key)) == version and not self._protected(conn, key):
                    released = self._forget_tree(conn, key)
                    self._bump(conn, [key])
                    released = self._unreferenced(conn, released)
                else:
                    released = []
                row = self._row(conn, key)
            self._finish(released)
            return row
        except SyncFailed:
            if row is not None:
                return row
            raise
        with self._journal.tx() as conn:
            released = []
            if self._dir_version(conn, self._parent(key)) == version and not self._protected(conn, key):
                released = self._upsert_remote(conn, key, entry, time.time())
                self._ensure_parents(conn, key, time.time(), bump=False, local=False)
                released = self._unreferenced(conn, released)
            row = self._row(conn, key)
        self._finish(released)
        return row

    def _lookup_for_write(self, key: str):
        """Like :meth:`_lookup`, but offline an unknown path counts as absent (a write there
        is based on "absent"; if the remote had something, the upload is a conflict)."""
        try:
            return self._lookup(key)
        except SyncFailed:
            return None

    def _listing_complete(self, conn, key: str) -> bool:
        d = self._dir_row(conn, key)
        return d is not None and d["listed"] > 0

    def _ensure_listing(self, key: str) -> None:
        """Make the local listing of directory ``key`` complete and fresh (when online)."""
        conn = self._journal.db()
        now = time.time()
        d = self._dir_row(conn, key)
        complete = d is not None and d["listed"] > 0
        if complete and self._fresh(d["listed"], now):
            return
        if complete and self._pending_on(conn, key):
            return  # made or moved here locally (or below a moved tree): local is the truth
        if not self.online and complete:
            return
        version = d["version"] if d is not None else 0
        self._forget_target_cache(key)
        try:
            listing = self._remote(self.fs.ls, key, detail=True, what=key)
        except FileNotFoundError:
            listing = None
        except SyncFailed:
            if complete or conn.execute("SELECT 1 FROM entries WHERE parent = ? LIMIT 1",
                                        (key,)).fetchone():
                return  # offline: what we know
            raise
        with self._journal.tx() as conn:
            if self._dir_version(conn, key) != version:
                return  # changed while we listed: the next call lists again
            pending = self._pending_under(conn, key)
            now = time.time()
            if listing is None:
                if self._protected(conn, key):
                    conn.execute("INSERT INTO dirs (path, listed) VALUES (?, ?) ON CONFLICT(path) "
                                 "DO UPDATE SET listed = excluded.listed", (key, now))
                    return
                released = self._unreferenced(conn, self._forget_tree(conn, key))
                self._bump(conn, [key])
                self._finish(released)
                return
            protected = set()
            for p in pending:
                if p == key:
                    continue
                rest = p[len(key):].lstrip("/") if not self._is_root(key) else p.lstrip("/")
                child = self.fs._strip_protocol(posixpath.join(key, rest.split("/", 1)[0])) \
                    if not self._is_root(key) else None
                if child is None:  # root: find the child of the root on the path
                    c = p
                    while not self._is_root(self._parent(c)):
                        c = self._parent(c)
                    child = c
                protected.add(child)
            remote = {}
            for entry in listing:
                name = self.fs._strip_protocol(entry["name"])
                if name == key or self._is_root(name):
                    continue
                remote[name] = entry
            released = []
            for name, entry in remote.items():
                if name in protected:
                    continue
                released += self._upsert_remote(conn, name, entry, now)
            for row in conn.execute("SELECT path FROM entries WHERE parent = ?", (key,)).fetchall():
                name = row["path"]
                if name not in remote and name not in protected:
                    released += self._forget_tree(conn, name)
            conn.execute("INSERT INTO dirs (path, listed) VALUES (?, ?) ON CONFLICT(path) "
                         "DO UPDATE SET listed = excluded.listed", (key, now))
            if not self._is_root(key):
                # listed by the remote: it exists there (no longer LOCAL_ONLY)
                conn.execute("UPDATE entries SET validated = ?, stamp = NULL WHERE path = ?",
                             (now, key))
            released = self._unreferenced(conn, released)
        self._finish(released)

    def ls(self, path, detail=True, **kwargs):
        key = self._key(path)
        hide_internal_path(key)
        self._touch_activity()
        row = self._lookup(key)
        if row is None:
            raise NotFound(f"no such file or directory: {key!r}", key)
        if row["type"] != "directory":
            return [self._entry(row)] if detail else [row["path"]]
        self._ensure_listing(key)
        rows = self._journal.db().execute(
            "SELECT path, size, type, mtime, created FROM entries WHERE parent = ? ORDER BY path",
            (key,)).fetchall()
        show = internals_visible()
        if detail:
            return [{"name": r[0], "size": r[1], "type": r[2], "mtime": r[3], "created": r[4]}
                    for r in rows if show or not is_internal(r[0])]
        return [r[0] for r in rows if show or not is_internal(r[0])]

    def info(self, path, **kwargs):
        key = self._key(path)
        hide_internal_path(key)
        self._touch_activity()
        row = self._lookup(key)
        if row is None:
            raise NotFound(f"no such file or directory: {key!r}", key)
        if self._is_root(key):
            return self._root_entry(key)
        return self._entry(row)

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        # fsspec's find asks isdir(path) and then info(path): two lookups, between which a
        # revalidation may learn the directory is gone. One lookup decides here.
        if is_internal(path) and not internals_visible():
            return {} if detail else []
        key = self._key(path)
        try:
            top = self.info(key)
        except FileNotFoundError:
            top = None
        out = {}
        if top is not None and top["type"] != "directory":
            out[top["name"]] = top
        elif top is not None:
            if withdirs and not self._is_root(key):
                out[top["name"]] = top
            for _, dirs, files in self.walk(key, maxdepth, detail=True, **kwargs):
                if withdirs:
                    files.update(dirs)
                out.update({entry["name"]: entry for entry in files.values()})
        names = sorted(out)
        return {name: out[name] for name in names} if detail else names

    def created(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["created"], datetime.timezone.utc)

    def modified(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.timezone.utc)

    def invalidate_cache(self, path=None):
        """Mark cached metadata stale (re-checked online before use; still served offline)."""
        conn = self._journal.db()
        if path is None:
            conn.execute("UPDATE entries SET validated = 0")
            conn.execute("UPDATE dirs SET listed = ? WHERE listed > 0", (STALE,))
        else:
            key = self._key(path)
            pattern = like_prefix(key)
            conn.execute("UPDATE entries SET validated = 0 WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                         (key, pattern))
            conn.execute("UPDATE dirs SET listed = ? WHERE listed > 0 AND (path = ? OR path LIKE ? "
                         "ESCAPE '\\')", (STALE, key, pattern))
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(path)

    def ukey(self, path):
        return AbstractFileSystem.ukey(self, path)

    # -- reading ---------------------------------------------------------------------------

    def _file_row(self, path):
        key = self._key(path)
        hide_internal_path(key)
        self._touch_activity()
        row = self._lookup(key)
        if row is None:
            raise NotFound(f"no such file: {key!r}", key)
        if row["type"] == "directory":
            raise IsADirectory(f"is a directory: {key!r}", key)
        return key, row

    def _touch_access(self, row) -> None:
        now = time.time()
        if now - row["accessed"] > ACCESS_GRANULARITY:
            with contextlib.suppress(Exception):
                self._journal.db().execute("UPDATE entries SET accessed = ? WHERE path = ?",
                                           (now, row["path"]))

    def _cached_full(self, row) -> str | None:
        if row["cached"] == "full" and row["blob"]:
            size = self._store.size(row["blob"])
            if size == row["size"]:
                return row["blob"]
        return None

    def _ensure_full(self, key: str, row, _tries: int = 3) -> tuple[str, Any]:
        """The blob holding the whole of ``key``, fetched from the remote if needed."""
        blob = self._cached_full(row)
        if blob is not None:
            self._touch_access(row)
            return blob, row
        if row["dirty"]:
            raise SyncFailed(f"local data of {key!r} is missing from the cache", key)
        if not self.online:
            self._offline_miss(key)
        temp, f = self._store.temp()
        f.close()
        try:
            self._remote(self.fs.get_file, key, temp, what=key)
            size = os.path.getsize(temp)
            blob = self._store.publish(temp, None, durable=False)  # clean data: re-fetchable
        except BaseException:
            self._store.drop_temp(temp)
            raise
        with self._journal.tx() as conn:
            current = self._row(conn, key)
            keep = not (current is None or current["dirty"] or current["stamp"] != row["stamp"]
                        or current["type"] != "file")
            released = []
            if keep:
                old = current["blob"]
                conn.execute("UPDATE entries SET blob = ?, cached = 'full', cached_bytes = ?, "
                             "size = ?, accessed = ? WHERE path = ?", (blob, size, size, time.time(), key))
                released = self._unreferenced(conn, [old]) if old and old != blob else []
                row = self._row(conn, key)
        if not keep:  # the entry changed while we fetched: resolve it again
            self._store.remove([blob])
            row = self._lookup(key)
            if row is None:
                raise NotFound(f"no such file: {key!r}", key)
            if _tries <= 1:
                raise SyncFailed(f"{key!r} keeps changing while it is fetched", key)
            return self._ensure_full(key, row, _tries - 1)
        self._finish(released)
        self._evict_soon()
        return blob, row

    def _offline_miss(self, key: str):
        try:
            self._remote(self.fs.info, key, what=key)
        except FileNotFoundError:
            raise NotFound(f"no such file: {key!r}", key) from None
        except SyncFailed:
            raise SyncFailed(f"offline and not cached: {key!r}", key) from None

    def _read_range(self, key: str, start: int, end: int, _tries: int = 3) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (clamped), from the cache or fetched by blocks."""
        key, row = self._file_row(key)
        size = row["size"]
        start, end = max(0, start), min(end, size)
        if start >= end:
            return b""
        blob = self._cached_full(row)
        if blob is None and (row["dirty"] or size <= self.whole_file_limit):
            blob, row = self._ensure_full(key, row)
        if blob is not None:
            self._touch_access(row)
            try:
                return self._store.read(blob, start, end)
            except FileNotFoundError:  # evicted by another process between lookup and read
                blob, row = self._ensure_full(key, self._row(self._journal.db(), key))
                return self._store.read(blob, start, end)
        return self._read_blocks(key, row, start, end, _tries)

    def _retry_range(self, key: str, start: int, end: int, tries: int) -> bytes:
        if tries <= 1:
            raise SyncFailed(f"{key!r} keeps changing while it is fetched", key)
        return self._read_range(key, start, end, tries - 1)

    def _read_blocks(self, key: str, row, start: int, end: int, _tries: int = 3) -> bytes:
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        conn = self._journal.db()
        blob = row["blob"] if row["cached"] == "partial" else None
        have = set()
        if blob:
            have = {r[0] for r in conn.execute(
                "SELECT idx FROM blocks WHERE blob = ? AND idx BETWEEN ? AND ?", (blob, first, last))}
            if self._store.size(blob) != row["size"]:
                blob, have = None, set()
        missing = [i for i in range(first, last + 1) if i not in have]
        if missing:
            if not self.online:
                self._offline_miss(key)
            if blob is None:
                blob = self._store.sparse(row["size"])
                with self._journal.tx() as conn:
                    current = self._row(conn, key)
                    changed = current is None or current["stamp"] != row["stamp"] or current["dirty"]
                    released = []
                    if not changed:
                        old = current["blob"]
                        # accessed = now: a fresh, still empty partial file is not "old"
                        conn.execute("UPDATE entries SET blob = ?, cached = 'partial', cached_bytes = 0, "
                                     "accessed = ? WHERE path = ?", (blob, time.time(), key))
                        released = self._unreferenced(conn, [old]) if old else []
                self._finish(released)
                if changed:
                    self._store.remove([blob])
                    return self._retry_range(key, start, end, _tries)
            runs: list[list[int]] = []
            for i in missing:
                if runs and runs[-1][-1] == i - 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            for run in runs:
                lo, hi = run[0] * bs, min(row["size"], (run[-1] + 1) * bs)
                data = self._remote(self.fs.cat_file, key, start=lo, end=hi, what=key)
                if len(data) != hi - lo:
                    raise SyncFailed(f"the remote copy of {key!r} changed while reading it", key)
                try:
                    self._store.write_at(blob, lo, data)
                except FileNotFoundError:  # evicted meanwhile (another process): start over
                    return self._retry_range(key, start, end, _tries)
                with self._journal.tx() as conn:
                    current = self._row(conn, key)
                    gone = current is None or current["blob"] != blob
                    if not gone:
                        conn.executemany("INSERT OR IGNORE INTO blocks VALUES (?, ?)",
                                         [(blob, i) for i in run])
                        count = conn.execute("SELECT COUNT(*) FROM blocks WHERE blob = ?",
                                             (blob,)).fetchone()[0]
                        total = -(-row["size"] // bs)
                        conn.execute("UPDATE entries SET cached = ?, cached_bytes = ?, accessed = ? "
                                     "WHERE path = ?", ("full" if count >= total else "partial",
                                                        min(row["size"], count * bs), time.time(), key))
                if gone:
                    return self._retry_range(key, start, end, _tries)
            self._evict_soon()
        else:
            self._touch_access(row)
        return self._store.read(blob, start, end)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "r" in mode:
            key, row = self._file_row(path)
            blob = self._cached_full(row)
            if blob is None and (row["dirty"] or row["size"] <= self.whole_file_limit):
                blob, row = self._ensure_full(key, row)
            if blob is not None:
                self._touch_access(row)
                return _BlobReader(self._store.path(blob), key, row["size"])
            return _RangeFile(self, key, row["size"], block_size or self.block_size)
        key = self._key(path)
        refuse_internal_write(key)
        self._touch_activity()
        self._check_writable(key)
        prefix = b""
        if "x" in mode and self.exists(key):
            raise FileExistsError(key)
        if "a" in mode and self.exists(key):
            prefix = self.cat_file(key)
        return _WriteFile(self, key, prefix)

    def cat_file(self, path, start=None, end=None, **kwargs):
        key, row = self._file_row(path)
        size = row["size"]
        start = 0 if start is None else (max(0, size + start) if start < 0 else start)
        end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        if start >= end:
            return b""
        return self._read_range(key, start, end)

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        if isinstance(path, list) and not recursive and not any(has_glob(p) for p in path) \
                and self.online:
            self._prefetch([self._key(p) for p in path])
        return AbstractFileSystem.cat(self, path, recursive=recursive, on_error=on_error, **kwargs)

    def _prefetch(self, keys: list[str]) -> None:
        """Fetch the uncached small files among ``keys`` with one bulk ``cat`` of the remote
        (concurrent on async targets) and cache them; anything unusual is left to the
        per-file path, which raises the right error."""
        wanted = {}
        conn = self._journal.db()
        for key in dict.fromkeys(keys):
            if is_internal(key) and not internals_visible():
                continue
            row = self._row(conn, key)
            if row is None or row["type"] != "file" or row["dirty"] \
                    or row["size"] > self.whole_file_limit or self._cached_full(row) is not None \
                    or not self._fresh(row["validated"], time.time()):
                continue
            wanted[key] = row
        if len(wanted) < 2:
            return
        try:
            fetched = self._remote(self.fs.cat, list(wanted), on_error="return")
        except Exception:
            return
        if not isinstance(fetched, dict):
            return
        blobs = {}
        for name, data in fetched.items():
            key = self.fs._strip_protocol(name)
            if key in wanted and isinstance(data, bytes) and len(data) == wanted[key]["size"]:
                blobs[key] = (self._store.write(data, durable=False), len(data))
        with self._journal.tx() as conn:
            released = []
            for key, (blob, size) in blobs.items():
                current = self._row(conn, key)
                if current is None or current["dirty"] or current["stamp"] != wanted[key]["stamp"]:
                    released.append(blob)
                    continue
                conn.execute("UPDATE entries SET blob = ?, cached = 'full', cached_bytes = ?, "
                             "accessed = ? WHERE path = ?", (blob, size, time.time(), key))
                released.append(current["blob"])
            released = self._unreferenced(conn, released)
        self._finish(released)
        self._evict_soon()

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        return AbstractFileSystem.get_file(self, rpath, lpath, callback=callback, outfile=outfile,
                                           **kwargs)

    # -- writing ---------------------------------------------------------------------------

    def _check_writable(self, key: str) -> None:
        conn = self._journal.db()
        row = self._row(conn, key)
        if row is not None and row["type"] == "directory":
            raise IsADirectory(f"is a directory: {key!r}", key)
        for a in self._ancestors(key):
            arow = self._row(conn, a)
            if arow is not None:
                if arow["type"] == "file":
                    raise NotADirectory(f"not a directory: {a!r}", a)
                break

    def _queued_bytes(self, conn) -> int:
        return conn.execute("SELECT COALESCE(SUM(size), 0) FROM ops WHERE kind = 'put'").fetchone()[0]

    def _reserve(self, size: int, key: str) -> None:
        """Wait until queued uploads plus ``size`` fit in ``max_cache_bytes``, or fail."""
        conn = self._journal.db()
        if self._queued_bytes(conn) + size <= self.max_cache_bytes:
            return
        deadline = time.monotonic() + self.quota_wait
        while True:
            self._syncer.kick()
            if self._queued_bytes(conn) + size <= self.max_cache_bytes:
                return
            if time.monotonic() >= deadline:
                raise StorageQuotaExceeded(
                    f"the offline cache holds {self._queued_bytes(conn)} bytes not yet uploaded; "
                    f"{size} more would pass max_cache_bytes={self.max_cache_bytes}", key)
            # the syncer (a thread here or another process sharing the cache) shrinks the
            # queue; only the journal shows it: poll it, bounded by quota_wait above
            time.sleep(0.05)

    def _ensure_parents(self, conn, key: str, now: float, bump: bool = True,
                        local: bool = True) -> None:
        """Directory entries for the ancestors of ``key`` the local view lacks: ``local`` when
        made for a local write or move (marked LOCAL_ONLY), else seen on the remote."""
        missing = []
        for a in self._ancestors(key):
            if self._is_root(a):
                break
            row = self._row(conn, a)
            if row is not None:
                break
            missing.append(a)
        for a in reversed(missing):
            parent = self._parent(a)
            conn.execute(
                "INSERT OR IGNORE INTO entries (path, parent, type, size, mtime, created, stamp, "
                "validated) VALUES (?, ?, 'directory', 0, ?, ?, ?, ?)",
                (a, parent, now, now, LOCAL_ONLY if local else None, now))
            if self._listing_complete(conn, parent):
                # the parent's complete listing lacked it: it is new, and so empty
                conn.execute("INSERT INTO dirs (path, listed) VALUES (?, ?) ON CONFLICT(path) "
                             "DO UPDATE SET listed = excluded.listed", (a, STALE))

    def _base_for(self, conn, key: str, row) -> str:
        """The remote state a new operation on ``key`` is based on (see ``ops.base``)."""
        if self._pending_on(conn, key):
            return "@chain"
        if row is None or row["type"] != "file":
            return "absent"
        # a file we know of whose remote stamp is unknown (not read after an upload or a
        # move, or a remote without stamps): no check, rather than a conflict with ourselves
        return row["stamp"] or "@any"

    def _drop_queued_put(self, conn, key: str):
        """Remove the last queued, never attempted upload of ``key`` if nothing after it
        touches ``key``: a newer write or a delete supersedes it. Returns the dropped op or
        None. One attempted before may have landed (its answer lost): it stays, and what
        follows is based on its outcome (``@chain``), not on its own base."""
        last = conn.execute("SELECT * FROM ops WHERE path = ? OR path2 = ? ORDER BY seq DESC LIMIT 1",
                            (key, key)).fetchone()
        if last is None or last["kind"] != "put" or last["path"] != key or last["state"] != "queued" \
                or last["attempts"] > 0:
            return None
        if self._tree_op_above(conn, key, after=last["seq"]):
            return None
        conn.execute("DELETE FROM ops WHERE seq = ?", (last["seq"],))
        return last

    def _commit_files(self, items: list[tuple[str, str, int]]) -> None:
        """Journal new local versions ``(key, blob, size)`` in one transaction."""
        released = []
        try:
            with self._journal.tx() as conn:
                now = time.time()
                for key, blob, size in items:
                    row = self._row(conn, key)
                    if row is not None and row["type"] == "directory":
                        raise IsADirectory(f"is a directory: {key!r}", key)
                    for a in self._ancestors(key):
                        arow = self._row(conn, a)
                        if arow is not None:
                            if arow["type"] == "file":
                                raise NotADirectory(f"not a directory: {a!r}", a)
                            break
                    dropped = self._drop_queued_put(conn, key)
                    if dropped is not None:
                        base = dropped["base"]
                        released.append(dropped["blob"])
                    else:
                        base = self._base_for(conn, key, row)
                    self._ensure_parents(conn, key, now)
                    conn.execute(
                        "INSERT INTO ops (kind, path, blob, size, base, created) VALUES "
                        "('put', ?, ?, ?, ?, ?)", (key, blob, size, base, now))
                    conn.execute(
                        "INSERT OR REPLACE INTO entries (path, parent, type, size, mtime, created, "
                        "stamp, blob, cached, cached_bytes, dirty, validated, accessed) VALUES "
                        "(?, ?, 'file', ?, ?, ?, ?, ?, 'full', ?, 1, ?, ?)",
                        (key, self._parent(key), size, now,
                         row["created"] if row is not None else now,
                         row["stamp"] if row is not None else None, blob, size, now, now))
                    if row is not None:
                        released.append(row["blob"])
                self._bump(conn, [k for k, _, _ in items])
                released = self._unreferenced(conn, released)
        except BaseException:
            self._store.remove([b for _, b, _ in items])
            raise
        self._finish(released)
        self._syncer.kick()
        self._evict_soon()

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        key = self._key(path)
        refuse_internal_write(key)
        self._touch_activity()
        if mode == "create" and self.exists(key):
            raise FileExistsError(key)
        self._check_writable(key)
        data = bytes(value) if not isinstance(value, bytes) else value
        self._reserve(len(data), key)
        blob = self._store.write(data, durable=self.fsync)
        self._commit_files([(key, blob, len(data))])

    def pipe(self, path, value=None, **kwargs):
        if isinstance(path, str):
            path = {path: value}
        items = {self._key(k): v for k, v in path.items()}
        for key in items:
            refuse_internal_write(key)
            self._check_writable(key)
        self._touch_activity()
        self._reserve(sum(len(v) for v in items.values()), next(iter(items), ""))
        written = []
        try:
            for key, data in items.items():
                written.append((key, self._store.write(data, durable=self.fsync), len(data)))
        except BaseException:
            self._store.remove([b for _, b, _ in written])
            raise
        self._commit_files(written)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        key = self._key(rpath)
        refuse_internal_write(key)
        if os.path.isdir(lpath):
            self.makedirs(key, exist_ok=True)
            return
        if mode == "create" and self.exists(key):
            raise FileExistsError(key)
        self._touch_activity()
        self._check_writable(key)
        size = os.path.getsize(lpath)
        callback.set_size(size)
        self._reserve(size, key)
        temp, f = self._store.temp()
        try:
            with open(lpath, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
            blob = self._store.publish(temp, f, durable=self.fsync)
        except BaseException:
            f.close()
            self._store.drop_temp(temp)
            raise
        callback.relative_update(size)
        self._commit_files([(key, blob, size)])

    def touch(self, path, truncate=True, **kwargs):
        key = self._key(path)
        refuse_internal_write(key)
        if truncate or not self.exists(key):
            self.pipe_file(key, b"")

    def cp_file(self, path1, path2, **kwargs):
        key2 = self._key(path2)
        refuse_internal_write(key2)
        key1 = self._key(path1)
        hide_internal_path(key1)
        row = self._lookup(key1)
        if row is not None and row["type"] == "directory":  # fsspec's copy hands us directories
            self.makedirs(key2, exist_ok=True)
            return
        key1, row = self._file_row(path1)
        self._check_writable(key2)
        blob, row = self._ensure_full(key1, row)
        self._reserve(row["size"], key2)
        temp, f = self._store.temp()
        try:
            with open(self._store.path(blob), "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
            new = self._store.publish(temp, f, durable=self.fsync)
        except BaseException:
            f.close()
            self._store.drop_temp(temp)
            raise
        self._commit_files([(key2, new, row["size"])])

    def _queue(self, conn, kind: str, key: str, key2: str | None = None, base: str | None = None) -> None:
        conn.execute("INSERT INTO ops (kind, path, path2, base, created) VALUES (?, ?, ?, ?, ?)",
                     (kind, key, key2, base, time.time()))

    def rm_file(self, path):
        key = self._key(path)
        refuse_internal_write(key)
        self._touch_activity()
        row = self._lookup(key)
        if row is None:
            raise NotFound(f"no such file: {key!r}", key)
        if row["type"] == "directory":
            raise IsADirectory(f"is a directory: {key!r}", key)
        self._remove_file(key)

    def _remove_file(self, key: str) -> None:
        with self._journal.tx() as conn:
            row = self._row(conn, key)
            if row is None:
                return
            released = [row["blob"]]
            dropped = self._drop_queued_put(conn, key)
            if dropped is not None:
                released.append(dropped["blob"])
            if dropped is not None and dropped["base"] == "absent" and not self._pending_on(conn, key):
                pass  # the remote never had it: nothing to delete there
            else:
                base = dropped["base"] if dropped is not None else self._base_for(conn, key, row)
                self._queue(conn, "rm", key, base=base)
            conn.execute("DELETE FROM entries WHERE path = ?", (key,))
            self._bump(conn, [key])
            released = self._unreferenced(conn, released)
        self._finish(released)
        self._syncer.kick()

    def rm(self, path, recursive=False, maxdepth=None):
        paths = path if isinstance(path, list) else [path]
        keys = []
        for p in paths:
            if isinstance(p, str) and has_glob(p):
                keys += self.glob(p)
            else:
                keys.append(self._key(p))
        for key in keys:
            refuse_internal_write(key)
        self._touch_activity()
        for key in keys:
            row = self._lookup(key)
            if row is None:
                raise NotFound(f"no such file or directory: {key!r}", key)
        for key in keys:
            row = self._lookup(key)
            if row is None:
                continue  # removed with a directory earlier in the list
            if row["type"] != "directory":
                self._remove_file(key)
            elif not recursive:
                if self.ls(key, detail=False):
                    raise IsADirectory(f"is a directory (use recursive=True): {key!r}", key)
                self.rmdir(key)
            elif self._is_root(key) or (not internals_visible() and self._holds_internal(key)):
                # never delete internal data (or the root) with a recursive delete: empty it
                for child in self.ls(key, detail=False):
                    self.rm(child, recursive=True)
            else:
                self._remove_tree(key)

    def _holds_internal(self, key: str) -> bool:
        with internal_access():
            row = self._lookup(self.fs._strip_protocol(posixpath.join(key, INTERNAL_DIR)))
        return row is not None

    def _remove_tree(self, key: str) -> None:
        with self._journal.tx() as conn:
            released = self._forget_tree(conn, key)
            conn.execute("DELETE FROM dirs WHERE path = ?", (key,))
            self._queue(conn, "rmtree", key)
            self._bump(conn, [key])
            released = self._unreferenced(conn, released)
        self._finish(released)
        self._syncer.kick()

    def rmdir(self, path):
        key = self._key(path)
        refuse_internal_write(key)
        row = self._lookup(key)
        if row is None:
            raise NotFound(f"no such directory: {key!r}", key)
        if row["type"] != "directory":
            raise NotADirectory(f"not a directory: {key!r}", key)
        with internal_access():
            if self.ls(key, detail=False):
                raise DirectoryNotEmpty(f"directory not empty: {key!r}", key)
        with self._journal.tx() as conn:
            conn.execute("DELETE FROM entries WHERE path = ?", (key,))
            conn.execute("DELETE FROM dirs WHERE path = ?", (key,))
            self._queue(conn, "rmdir", key)
            self._bump(conn, [key])
        self._syncer.kick()

    def mkdir(self, path, create_parents=True, **kwargs):
        key = self._key(path)
        refuse_internal_write(key)
        self._touch_activity()
        if self._is_root(key):
            raise FileExistsError(key)
        if self._lookup_for_write(key) is not None:
            raise FileExistsError(key)
        parent = self._parent(key)
        prow = self._lookup_for_write(parent)
        if prow is None and not create_parents:
            raise NotFound(f"no such directory: {parent!r}", parent)
        if prow is not None and prow["type"] == "file":
            raise NotADirectory(f"not a directory: {parent!r}", parent)
        with self._journal.tx() as conn:
            now = time.time()
            self._ensure_parents(conn, key, now)
            conn.execute(
                "INSERT OR REPLACE INTO entries (path, parent, type, size, mtime, created, validated) "
                "VALUES (?, ?, 'directory', 0, ?, ?, ?)", (key, parent, now, now, now))
            conn.execute("INSERT INTO dirs (path, listed) VALUES (?, ?) ON CONFLICT(path) DO UPDATE "
                         "SET listed = excluded.listed", (key, now))
            self._queue(conn, "mkdir", key)
            self._clear_local_only(conn, key)
            self._bump(conn, [key])
        self._syncer.kick()

    def makedirs(self, path, exist_ok=False):
        key = self._key(path)
        refuse_internal_write(key)
        if self._is_root(key):
            if exist_ok:
                return
            raise FileExistsError(key)
        row = self._lookup_for_write(key)
        if row is not None:
            if row["type"] == "directory" and exist_ok:
                if row["stamp"] == LOCAL_ONLY:
                    self._queue_local_only_mkdir(key)
                return
            raise FileExistsError(key)
        self.mkdir(key, create_parents=True)

    def _queue_local_only_mkdir(self, key: str) -> None:
        """An explicit makedirs of a directory that exists here only as the parent of queued
        operations: queue its mkdir, so it stays on the remote when those are coalesced away
        (a write then moved elsewhere or deleted before it was uploaded)."""
        with self._journal.tx() as conn:
            row = self._row(conn, key)
            if row is None or row["type"] != "directory" or row["stamp"] != LOCAL_ONLY:
                return
            self._queue(conn, "mkdir", key)
            self._clear_local_only(conn, key)
        self._syncer.kick()

    def _clear_local_only(self, conn, key: str) -> None:
        """A queued mkdir of ``key`` makes it and its parents on the remote."""
        conn.executemany("UPDATE entries SET stamp = NULL WHERE path = ? AND stamp = ?",
                         [(p, LOCAL_ONLY) for p in [key, *self._ancestors(key)]
                          if not self._is_root(p)])

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        if isinstance(path1, list):
            for p in path1:
                self.mv(p, posixpath.join(self._key(path2), posixpath.basename(self._key(p))),
                        recursive=recursive)
            return
        src, dst = self._key(path1), self._key(path2)
        refuse_internal_write(src)
        refuse_internal_write(dst)
        self._touch_activity()
        if src == dst:
            return
        row = self._lookup(src)
        if row is None:
            raise NotFound(f"no such file or directory: {src!r}", src)
        drow = self._lookup_for_write(dst)
        if drow is not None and drow["type"] == "directory":
            dst = self.fs._strip_protocol(posixpath.join(dst, posixpath.basename(src)))
            drow = self._lookup_for_write(dst)
        if dst == src or dst.startswith(src + "/"):
            raise InvalidArgument(f"cannot move {src!r} into itself ({dst!r})")
        if row["type"] == "directory":
            if drow is not None:
                raise FileExistsError(dst)
            self._ensure_listing(src)
            self._list_tree(src)
            self._move_with_data(src, dst, tree=True)
        else:
            if drow is not None and drow["type"] == "directory":
                raise IsADirectory(f"is a directory: {dst!r}", dst)
            self._check_writable(dst)
            self._move_with_data(src, dst, tree=False)
        self._syncer.kick()

    def _move_with_data(self, src: str, dst: str, tree: bool) -> None:
        """Fetch the data the move carries, then move; online, try again (three times) if
        some of it was evicted or replaced in between, then move what is there."""
        move = self._move_tree if tree else self._move_file
        for _ in range(3):
            self._cache_for_move(src, tree=tree)
            if move(src, dst, strict=self.online):
                return
        move(src, dst, strict=False)

    def _list_tree(self, src: str) -> None:
        """Complete the local listings below directory ``src`` (a move takes along only what
        the local view holds: a subdirectory never listed would arrive empty, as the remote
        has nothing at the new names until the move lands). Offline: what is known."""
        conn = self._journal.db()
        todo = [r["path"] for r in conn.execute(
            "SELECT path FROM entries WHERE parent = ? AND type = 'directory'", (src,))]
        while todo:
            d = todo.pop()
            with contextlib.suppress(SyncFailed, FileNotFoundError, NotFound):
                self._ensure_listing(d)
            todo += [r["path"] for r in conn.execute(
                "SELECT path FROM entries WHERE parent = ? AND type = 'directory'", (d,))]

    def _uncached_files(self, conn, src: str, tree: bool) -> list:
        """File rows at (or, for a tree, below) ``src`` whose whole data is not in the store."""
        if tree:
            rows = conn.execute("SELECT * FROM entries WHERE type = 'file' AND path LIKE ? ESCAPE '\\'",
                                (like_prefix(src),)).fetchall()
        else:
            rows = [r for r in [self._row(conn, src)] if r is not None and r["type"] == "file"]
        # a dirty row without its data (moved while offline) has nothing left to fetch
        return [r for r in rows if self._cached_full(r) is None and not r["dirty"]]

    def _cache_for_move(self, src: str, tree: bool) -> None:
        """Fetch the data of the files a move is about to carry. Until the move reaches the
        remote, the remote has nothing at the new names: a moved file whose data is not in
        the cache could not be read (its row is dirty, or a read would ask the remote for
        the destination name). Offline nothing can be fetched: see ``_move_file``."""
        if not self.online:
            return
        for row in self._uncached_files(self._journal.db(), src, tree):
            # gone meanwhile: the move notices; unreachable: the move goes ahead offline
            with contextlib.suppress(FileNotFoundError, NotFound, SyncFailed):
                self._ensure_full(row["path"], row)

    def _move_file(self, src: str, dst: str, strict: bool = False) -> bool:
        """Move the local view of file ``src`` to ``dst`` and queue the move. With ``strict``
        nothing happens (returns False) unless the data of ``src`` is in the cache (evicted
        or replaced by a listing since it was fetched: the caller fetches it again)."""
        with self._journal.tx() as conn:
            now = time.time()
            row = self._row(conn, src)
            if row is None:
                raise NotFound(f"no such file or directory: {src!r}", src)
            if strict and self._uncached_files(conn, src, tree=False):
                return False
            drow = self._row(conn, dst)
            released = [drow["blob"]] if drow is not None else []
            dropped = self._drop_queued_put(conn, src)
            if dropped is not None and dropped["base"] == "absent" and not self._pending_on(conn, src):
                # a file only this cache has: upload it at its new name instead
                base = self._base_for(conn, dst, drow)
                dropped_dst = self._drop_queued_put(conn, dst)
                if dropped_dst is not None:
                    released.append(dropped_dst["blob"])
                    base = dropped_dst["base"]
                conn.execute("INSERT INTO ops (kind, path, blob, size, base, created) VALUES "
                             "('put', ?, ?, ?, ?, ?)", (dst, dropped["blob"], dropped["size"], base, now))
            else:
                if dropped is not None:  # put back: the mv must move the new content
                    conn.execute("INSERT INTO ops (seq, kind, path, blob, size, base, state, created) "
                                 "VALUES (?, 'put', ?, ?, ?, ?, 'queued', ?)",
                                 (dropped["seq"], src, dropped["blob"], dropped["size"],
                                  dropped["base"], dropped["created"]))
                # based on what this cache knew at the destination: a file someone else
                # put there meanwhile is a conflict, never silently replaced
                self._queue(conn, "mv", src, dst, base=self._base_for(conn, dst, drow))
            conn.execute("DELETE FROM entries WHERE path = ?", (dst,))
            self._ensure_parents(conn, dst, now)
            conn.execute("UPDATE entries SET path = ?, parent = ?, dirty = 1, validated = ?, "
                         "stamp = NULL WHERE path = ?", (dst, self._parent(dst), now, src))
            self._bump(conn, [src, dst])
            released = self._unreferenced(conn, released)
        self._finish(released)
        return True

    def _move_tree(self, src: str, dst: str, strict: bool = False) -> bool:
        """Move the local view of directory ``src`` to ``dst`` and queue the move. With
        ``strict`` nothing happens (returns False) unless every file below ``src`` has its
        data in the cache. Moved files become dirty: the remote has nothing at their new
        names until the move lands (``_done_many`` clears it), so their data must not be
        evicted, and a read of one not cached (moved offline) must not ask the remote."""
        with self._journal.tx() as conn:
            now = time.time()
            pattern = like_prefix(src)
            if strict and self._uncached_files(conn, src, tree=True):
                return False
            rows = conn.execute("SELECT * FROM entries WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                                (src, pattern)).fetchall()
            dirs = conn.execute("SELECT * FROM dirs WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                                (src, pattern)).fetchall()
            conn.execute("DELETE FROM entries WHERE path = ? OR path LIKE ? ESCAPE '\\'", (src, pattern))
            conn.execute("DELETE FROM dirs WHERE path = ? OR path LIKE ? ESCAPE '\\'", (src, pattern))
            self._ensure_parents(conn, dst, now)

            def moved(p: str) -> str:
                return dst + p[len(src):]

            for r in rows:
                values = dict(r)
                values["path"] = moved(r["path"])
                values["parent"] = self._parent(dst) if r["path"] == src else moved(r["parent"])
                values["validated"] = now
                if r["type"] == "file":
                    values["dirty"] = 1  # not on the remote under this name: never evicted
                columns = ", ".join(values)
                conn.execute(f"INSERT OR REPLACE INTO entries ({columns}) VALUES "
                             f"({', '.join('?' for _ in values)})", tuple(values.values()))
            for d in dirs:
                conn.execute("INSERT OR REPLACE INTO dirs (path, listed, version) VALUES (?, ?, ?)",
                             (moved(d["path"]), d["listed"], d["version"] + 1))
            self._queue(conn, "mvtree", src, dst)
            self._bump(conn, [src, dst])
        return True

    # -- eviction and pins -----------------------------------------------------------------

    def _evict_soon(self) -> None:
        now = time.monotonic()
        if now - getattr(self, "_last_evict", 0.0) < 0.5:
            return
        self._last_evict = now
        self.evict()

    def pins(self) -> list[str]:
        """Paths kept available offline."""
        return [r[0] for r in self._journal.db().execute("SELECT path FROM pins ORDER BY path")]

    def pin(self, path) -> int:
        """Keep ``path`` (a file, or a folder and everything in it) available offline: fetch
        it now and never evict it. Returns how many files were fetched."""
        key = self._key(path)
        row = self._lookup(key)
        if row is None:
            raise NotFound(f"no such file or directory: {key!r}", key)
        with self._journal.tx() as conn:
            conn.execute("INSERT OR IGNORE INTO pins VALUES (?)", (key,))
        files = [key] if row["type"] == "file" else self.find(key)
        for name in files:
            k, r = self._file_row(name)
            self._ensure_full(k, r)
        return len(files)

    def refresh_pins(self) -> int:
        """Fetch what pinned folders gained since they were pinned (the syncer does this when
        idle and online). Returns how many files were fetched."""
        fetched = 0
        for key in self.pins():
            try:
                row = self._lookup(key)
                if row is None:
                    continue
                for name in ([key] if row["type"] == "file" else self.find(key)):
                    k, r = self._file_row(name)
                    if self._cached_full(r) is None:
                        self._ensure_full(k, r)
                        fetched += 1
            except (FileNotFoundError, SyncFailed):
                continue
        return fetched

    def unpin(self, path) -> None:
        """Let ``path`` be evicted again."""
        with self._journal.tx() as conn:
            conn.execute("DELETE FROM pins WHERE path = ?", (self._key(path),))

    def _pinned(self, key: str, pins: list[str]) -> bool:
        return any(key == p or self._is_root(p) or key.startswith(p + "/") for p in pins)

    def evict(self, max_bytes: int | None = None) -> dict:
        """Drop clean cached data: LRU above ``max_bytes`` (default ``max_cache_bytes``) and
        anything not read for ``max_age_days``. Dirty and pinned data stay."""
        limit = self.max_cache_bytes if max_bytes is None else int(max_bytes)
        conn = self._journal.db()
        total = conn.execute("SELECT COALESCE(SUM(cached_bytes), 0) FROM entries").fetchone()[0]
        cutoff = time.time() - self.max_age_days * 86400
        old = conn.execute("SELECT 1 FROM entries WHERE blob IS NOT NULL AND accessed < ? AND "
                           "dirty = 0 LIMIT 1", (cutoff,)).fetchone()
        if total <= limit and old is None:
            return {"evicted_files": 0, "evicted_bytes": 0, "cached_bytes": total}
        pins = self.pins()
        evicted, freed = 0, 0
        with self._journal.tx() as conn:
            candidates = conn.execute(
                "SELECT path, blob, cached_bytes, accessed FROM entries WHERE blob IS NOT NULL AND "
                "dirty = 0 AND blob NOT IN (SELECT blob FROM ops WHERE blob IS NOT NULL) "
                "ORDER BY accessed").fetchall()
            released = []
            for c in candidates:
                if total <= limit and c["accessed"] >= cutoff:
                    break
                if self._pinned(c["path"], pins):
                    continue
                conn.execute("UPDATE entries SET blob = NULL, cached = 'none', cached_bytes = 0 "
                             "WHERE path = ?", (c["path"],))
                released.append(c["blob"])
                total -= c["cached_bytes"]
                freed += c["cached_bytes"]
                evicted += 1
            released = self._unreferenced(conn, released)
        self._finish(released)
        return {"evicted_files": evicted, "evicted_bytes": freed, "cached_bytes": total}

    # -- sync, status, lifecycle -----------------------------------------------------------

    def sync(self, wait: bool = False, timeout: float | None = None) -> dict:
        """Start a drain of the queue; with ``wait`` return once it is empty, or raise
        ``SYNC_FAILED`` while offline (or when operations failed for good)."""
        self._touch_activity()
        if not self._syncer.alive():  # syncer=False, or closed: an explicit sync starts it
            self._closed = False
            self._syncer.start()
        self._syncer.kick()
        if not wait:
            return self.queue_totals()
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._journal.db()
        while True:
            # one statement: a consistent snapshot of the queue
            count, size, oldest, active = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created), "
                "COALESCE(SUM(state != 'error'), 0) FROM ops").fetchone()
            totals = {"count": count, "bytes": size, "oldest": oldest}
            if count == 0:
                return totals
            if not self.online and not self.probe():
                raise SyncFailed(f"offline: {totals['count']} operations ({totals['bytes']} bytes) "
                                 f"wait for the connection ({self.last_error})")
            if active == 0:
                errors = [dict(r) for r in conn.execute(
                    "SELECT seq, kind, path, error FROM ops WHERE state = 'error' LIMIT 5")]
                raise SyncFailed(f"{totals['count']} operations failed for good: {errors}")
            if deadline is not None and time.monotonic() > deadline:
                raise SyncFailed(f"sync did not finish in {timeout} s: {totals['count']} queued")
            if not self._syncer.alive():
                self._syncer.start()
            self._syncer.wait_progress(0.05)

    def queue_totals(self) -> dict:
        """``{"count", "bytes", "oldest"}`` of the operation journal (oldest: unix time)."""
        row = self._journal.db().execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM ops").fetchone()
        return {"count": row[0], "bytes": row[1], "oldest": row[2]}

    def _state_of(self, conn, row, conflicts: set[str]) -> str:
        key = row["path"]
        if key in conflicts:
            return "conflict"
        ops = conn.execute("SELECT state FROM ops WHERE path = ? OR path2 = ?", (key, key)).fetchall()
        states = {o[0] for o in ops}
        if "error" in states:
            return "error"
        if "uploading" in states:
            return "uploading"
        if states or row["dirty"]:
            return "dirty"
        if row["cached"] == "full":
            return "cached"
        if row["cached"] == "partial":
            return "partial"
        return "not cached"

    def _file_status(self, conn, row, conflicts, pins) -> dict:
        return {"path": row["path"], "type": row["type"], "size": row["size"],
                "state": self._state_of(conn, row, conflicts), "cached_bytes": row["cached_bytes"],
                "pinned": self._pinned(row["path"], pins)}

    def status(self, path=None) -> dict:
        """Per-file state (``cached``, ``partial``, ``not cached``, ``dirty``, ``uploading``,
        ``error``, ``conflict``) and queue totals. Without ``path``: the whole cache
        (conflicts, errors, cache use); with a file: that file; with a folder: its files."""
        conn = self._journal.db()
        conflicts_rows = [dict(r) for r in conn.execute(
            "SELECT path, copy, policy, outcome, detected, detail FROM conflicts ORDER BY id")]
        conflict_paths = {c["path"] for c in conflicts_rows} | {c["copy"] for c in conflicts_rows if c["copy"]}
        pins = self.pins()
        cache = conn.execute(
            "SELECT COALESCE(SUM(cached_bytes), 0), COUNT(blob), COALESCE(SUM(dirty), 0) FROM entries").fetchone()
        out = {
            "online": self.online,
            "offline_since": self.offline_since,
            "last_error": self.last_error,
            "queue": self.queue_totals(),
            "syncer": {"running": self._syncer.alive(), "holds_lock": self._syncer.holding},
            "cache": {"dir": self.cache_dir, "cached_bytes": cache[0], "cached_files": cache[1],
                      "dirty_files": cache[2], "queued_bytes": self._queued_bytes(conn),
                      "max_cache_bytes": self.max_cache_bytes},
            "conflicts": conflicts_rows,
            "errors": [dict(r) for r in conn.execute(
                "SELECT seq, kind, path, path2, attempts, error FROM ops WHERE error IS NOT NULL "
                "ORDER BY seq LIMIT 100")],
            "pins": pins,
        }
        if path is None:
            return out
        key = self._key(path)
        row = self._row(conn, key)
        if row is None:
            row = self._lookup(key)
        if row is None:
            raise NotFound(f"no such file or directory: {key!r}", key)
        if row["type"] == "file" and not self._is_root(key):
            out["file"] = self._file_status(conn, row, conflict_paths, pins)
            return out
        rows = conn.execute("SELECT * FROM entries WHERE type = 'file' AND (path LIKE ? ESCAPE '\\' "
                            "OR ? IN ('', '/')) ORDER BY path",
                            (like_prefix(key), key)).fetchall()
        files = [self._file_status(conn, r, conflict_paths, pins) for r in rows
                 if internals_visible() or not is_internal(r["path"])]
        counts: dict[str, int] = {}
        for f in files:
            counts[f["state"]] = counts.get(f["state"], 0) + 1
        out["files"] = files
        out["counts"] = counts
        return out

    def conflicts(self) -> list[dict]:
        """Conflicts recorded so far (oldest first)."""
        return self.status()["conflicts"]

    def clear_conflicts(self) -> int:
        """Forget the recorded conflicts (the conflicted copies stay); returns how many."""
        with self._journal.tx() as conn:
            return conn.execute("DELETE FROM conflicts").rowcount

    def close(self) -> None:
        """Stop this process's syncer (queued operations stay journaled for the next start)."""
        if self._closed:
            return
        self._closed = True
        self._syncer.stop()
        self._journal.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
