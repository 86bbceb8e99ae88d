"""The offline layer's SQLite database ``local_storage.db``: metadata, journal, file state.

One database per cache directory, in WAL mode, shared by every process using that cache
directory. Writers take ``BEGIN IMMEDIATE`` so two processes never interleave a journal
change. Tables (``docs/formats/offline.md`` has the details):

* ``entries``: the local view of every path seen (remote listings merged with local edits):
  type, size, times, the remote ``stamp`` the local state is based on, the ``blob`` holding
  its data in the local store, how much of it is cached, whether it is dirty.
* ``dirs``: directories whose complete listing is known, and when it was last taken.
* ``ops``: the operation journal, applied to the remote in ``seq`` order.
* ``conflicts``, ``pins``, ``blocks`` (cached ranges of partially cached files), ``meta``.
"""

from __future__ import annotations

import os
import sqlite3
import time

from aiofs.errors import ConfigError
from aiofs.sqlite_state import ThreadConnections

FORMAT = "aiofs-offline"
FORMAT_VERSION = 1
APPLICATION_ID = 0x61666f66  # "afof"
DB_NAME = "local_storage.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,          -- the target's normalised path
    parent TEXT NOT NULL,           -- the target's normalised parent path ('' at the root)
    type TEXT NOT NULL,             -- 'file' | 'directory'
    size INTEGER NOT NULL,          -- logical size of the local view
    mtime REAL NOT NULL,            -- unix time
    created REAL NOT NULL,
    stamp TEXT,                     -- remote version the local state is based on (NULL: unknown)
    blob TEXT,                      -- local data file name, NULL: nothing cached
    cached TEXT NOT NULL DEFAULT 'none',  -- 'full' | 'partial' | 'none'
    cached_bytes INTEGER NOT NULL DEFAULT 0,
    dirty INTEGER NOT NULL DEFAULT 0,     -- 1: local changes not yet on the remote
    validated REAL NOT NULL DEFAULT 0,    -- unix time the remote last confirmed this entry
    accessed REAL NOT NULL DEFAULT 0      -- unix time of the last read (LRU eviction)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent);
CREATE TABLE IF NOT EXISTS dirs (
    path TEXT PRIMARY KEY,
    listed REAL NOT NULL DEFAULT 0,       -- unix time of the last complete listing, 0: never
    version INTEGER NOT NULL DEFAULT 0    -- bumped by every change below this directory
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,             -- put | rm | rmtree | mkdir | rmdir | mv | mvtree
    path TEXT NOT NULL,
    path2 TEXT,                     -- destination of mv / mvtree
    blob TEXT,                      -- put: the local data file uploaded
    size INTEGER NOT NULL DEFAULT 0,
    base TEXT,                      -- remote stamp the edit was based on: a stamp, 'absent',
                                    -- '@chain' (whatever the previous op on the path left)
    state TEXT NOT NULL DEFAULT 'queued', -- queued | uploading | error
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    error TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_path ON ops (path);
CREATE INDEX IF NOT EXISTS ops_path2 ON ops (path2);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,             -- where the remote version stays
    copy TEXT,                      -- where the local edit went (keep-both), else NULL
    policy TEXT NOT NULL,
    outcome TEXT NOT NULL,          -- kept-both | local-won | remote-won
    detected REAL NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS pins (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    blob TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (blob, idx)
) WITHOUT ROWID;
"""


def like_prefix(path: str) -> str:
    """A ``LIKE`` pattern (escape ``\\``) matching every path strictly below ``path``."""
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


class Journal:
    """Connections (one per thread and process) to ``local_storage.db`` and transactions."""

    def __init__(self, path: str):
        self.path = path
        # FULL: a committed journal entry survives power loss, not only a process kill;
        # acknowledged writes are promised to reach the remote.
        self._connections = ThreadConnections(path, synchronous="FULL", row_factory=sqlite3.Row)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._init()

    def db(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own)."""
        return self._connections.db()

    def tx(self):
        """A write transaction; ``BEGIN IMMEDIATE`` serialises writers across processes."""
        return self._connections.tx()

    def close(self) -> None:
        """Close this thread's connection."""
        self._connections.close()

    def _init(self) -> None:
        conn = self.db()
        with self.tx():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("version", str(FORMAT_VERSION)),
                    ("created_at", repr(time.time()))])
            elif rows.get("format") != FORMAT or int(rows.get("version", 0)) > FORMAT_VERSION:
                raise ConfigError(
                    f"{self.path} is not an {FORMAT} database of version <= {FORMAT_VERSION}")
