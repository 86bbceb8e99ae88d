"""Per-thread SQLite connections in WAL mode, and write transactions across processes.

Modules that keep local state in SQLite (Quota's usage, the Offline journal, the usage
history) share this: one connection per thread and per process (a forked child opens its
own), WAL so readers never block the writer, and ``BEGIN IMMEDIATE`` transactions so two processes never
interleave their read-check-write sequences.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator


class ThreadConnections:
    """Connections to the database at ``path``, one per thread and process.

    ``synchronous`` is SQLite's setting (``"FULL"``: a commit survives power loss;
    ``"NORMAL"``: it survives a process kill); ``pragmas`` are extra ``PRAGMA`` statements;
    ``row_factory`` as in :mod:`sqlite3`.
    """

    def __init__(self, path: str, synchronous: str = "NORMAL", pragmas: tuple[str, ...] = (),
                 row_factory=None):
        self.path = path
        self.synchronous = synchronous
        self.pragmas = pragmas
        self.row_factory = row_factory
        self._local = threading.local()

    def db(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                   check_same_thread=False)
            if self.row_factory is not None:
                conn.row_factory = self.row_factory
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            for pragma in self.pragmas:
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``BEGIN IMMEDIATE`` serialises writers across processes."""
        conn = self.db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (the next :meth:`db` opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local.conn = None
