"""The local cache of one dedup store: chunk index and manifest summaries, in SQLite (WAL).

It is only a cache: the store's index files and manifests are the truth. Everything here
is rebuilt from the target when the file is missing, unreadable or of another store
(``store_id`` differs), and checked against the target before it is trusted:

* ``chunks``: chunk id -> (pack, offset, length), loaded from the store's immutable index
  files; ``index_files`` names the files loaded. When the store lists an index file that is
  not loaded, it is read; when a loaded one is gone (``gc`` consolidated it), everything
  is reloaded.
* ``manifests``: path -> (stamp of the manifest object, logical size, blake3), so
  ``ls``/``info`` give logical sizes without reading manifests; a row is used only when
  the target's stamp of the object (mtime, inode, etag...) is unchanged.

The database starts with ``PRAGMA application_id`` = 0x41494644 ("AIFD"), ``user_version`` 1.
"""

from __future__ import annotations

import os
import posixpath
import sqlite3
import threading
from collections.abc import Iterable

APPLICATION_ID = 0x41494644
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chunks (id BLOB PRIMARY KEY, pack TEXT NOT NULL,"
    " offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks (pack)",
    "CREATE TABLE IF NOT EXISTS index_files (name TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS manifests (parent TEXT NOT NULL, name TEXT NOT NULL,"
    " stamp TEXT NOT NULL, size INTEGER NOT NULL, blake3 TEXT NOT NULL,"
    " PRIMARY KEY (parent, name)) WITHOUT ROWID",
)

_BATCH = 500


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


class StoreCache:
    """SQLite cache of one store (``path=None``: an in-memory database for this process)."""

    def __init__(self, path: str | None):
        self.path = path
        self._local = threading.local()
        self._pid = os.getpid()
        self._memory_conn: sqlite3.Connection | None = None
        self._memory_lock = threading.RLock()

    # -- connections -------------------------------------------------------------------------

    def _open(self, path: str) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if (app, version) not in ((0, 0), (APPLICATION_ID, SCHEMA_VERSION)):
            raise sqlite3.DatabaseError(f"{path} is not an aiofs dedup cache v{SCHEMA_VERSION}")
        for statement in _SCHEMA:
            conn.execute(statement)
        if (app, version) == (0, 0):
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return conn

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (one shared, locked connection for an in-memory cache)."""
        if self.path is None:
            if self._memory_conn is None:
                with self._memory_lock:
                    if self._memory_conn is None:
                        conn = sqlite3.connect(":memory:", isolation_level=None,
                                               check_same_thread=False)
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        self._memory_conn = conn
            return self._memory_conn
        if self._pid != os.getpid():  # a forked child never uses its parent's connections
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._open(self.path)
            except sqlite3.DatabaseError:
                # a corrupt or foreign file: it is only a cache, start again
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.unlink(self.path + suffix)
                    except FileNotFoundError:
                        pass
                conn = self._open(self.path)
            self._local.conn = conn
        return conn

    def _write(self, work) -> None:
        conn = self.conn()
        with self._memory_lock if self.path is None else _NoLock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, args=()) -> list:
        conn = self.conn()
        with self._memory_lock if self.path is None else _NoLock():
            return conn.execute(sql, args).fetchall()

    # -- store identity ------------------------------------------------------------------------

    def bind(self, store_id: str) -> None:
        """Make this cache belong to ``store_id``: rows of another store are dropped."""
        rows = self._read("SELECT value FROM meta WHERE key='store_id'")
        if rows and rows[0][0] == store_id:
            return

        def work(conn):
            for table in ("chunks", "index_files", "manifests", "meta"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?)", (store_id,))

        self._write(work)

    # -- chunk index ---------------------------------------------------------------------------

    def loaded_index_files(self) -> set[str]:
        return {r[0] for r in self._read("SELECT name FROM index_files")}

    def add_index(self, name: str | None, packs: dict[str, list[tuple[bytes, int, int]]]) -> None:
        """Rows of one index file (``name``) or of packs this process just wrote (``None``)."""
        rows = [(cid, pack, offset, length) for pack, chunks in packs.items()
                for cid, offset, length in chunks]

        def work(conn):
            conn.executemany("INSERT OR REPLACE INTO chunks (id, pack, offset, length) "
                             "VALUES (?, ?, ?, ?)", rows)
            if name is not None:
                conn.execute("INSERT OR IGNORE INTO index_files (name) VALUES (?)", (name,))

        self._write(work)

    def reset_index(self) -> None:
        """Forget every chunk and index file (before a full reload)."""
        self._write(lambda conn: (conn.execute("DELETE FROM chunks"),
                                  conn.execute("DELETE FROM index_files")))

    def locate(self, ids: Iterable[bytes]) -> dict[bytes, tuple[str, int, int]]:
        """``id -> (pack, offset, length)`` for the ids the index knows."""
        ids = list(dict.fromkeys(ids))
        out: dict[bytes, tuple[str, int, int]] = {}
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            for cid, pack, offset, length in self._read(
                    f"SELECT id, pack, offset, length FROM chunks WHERE id IN ({marks})", batch):
                out[bytes(cid)] = (pack, offset, length)
        return out

    def known(self, ids: Iterable[bytes]) -> set[bytes]:
        """The ids among ``ids`` that are stored already."""
        ids = list(dict.fromkeys(ids))
        out: set[bytes] = set()
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            out.update(bytes(r[0]) for r in self._read(
                f"SELECT id FROM chunks WHERE id IN ({marks})", batch))
        return out

    def counts(self) -> tuple[int, int, int]:
        """(chunks, packs, bytes of unique chunks) the index knows."""
        row = self._read("SELECT COUNT(*), COUNT(DISTINCT pack), COALESCE(SUM(length), 0) "
                         "FROM chunks")[0]
        return int(row[0]), int(row[1]), int(row[2])

    # -- manifest summaries --------------------------------------------------------------------

    def manifests(self, names: Iterable[str]) -> dict[str, tuple[str, int, str]]:
        """``name -> (stamp, size, blake3)`` for the names cached."""
        by_parent: dict[str, list[str]] = {}
        for name in names:
            by_parent.setdefault(posixpath.dirname(name), []).append(name)
        out: dict[str, tuple[str, int, str]] = {}
        for parent, group in by_parent.items():
            if len(group) > 32:  # a listing: the whole directory in one query
                wanted = set(group)
                for name, stamp, size, digest in self._read(
                        "SELECT name, stamp, size, blake3 FROM manifests WHERE parent=?", (parent,)):
                    if name in wanted:
                        out[name] = (stamp, size, digest)
                continue
            for start in range(0, len(group), _BATCH):
                batch = group[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                for name, stamp, size, digest in self._read(
                        f"SELECT name, stamp, size, blake3 FROM manifests WHERE parent=? AND "
                        f"name IN ({marks})", (parent, *batch)):
                    out[name] = (stamp, size, digest)
        return out

    def put_manifests(self, rows: list[tuple[str, str, int, str]]) -> None:
        """Rows of ``(name, stamp, size, blake3)``."""
        if not rows:
            return
        self._write(lambda conn: conn.executemany(
            "INSERT OR REPLACE INTO manifests (parent, name, stamp, size, blake3) "
            "VALUES (?, ?, ?, ?, ?)",
            [(posixpath.dirname(n), n, st, sz, h) for n, st, sz, h in rows]))

    def forget_manifests(self, prefixes: Iterable[str]) -> None:
        """Drop the rows of these paths and everything below them."""
        prefixes = [p.rstrip("/") for p in prefixes]
        if not prefixes:
            return

        def work(conn):
            for p in prefixes:
                conn.execute("DELETE FROM manifests WHERE name=? OR name LIKE ? ESCAPE '\\'",
                             (p, _like_prefix(p)))

        self._write(work)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
