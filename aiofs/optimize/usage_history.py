"""Daily history of a stack's usage in SQLite, for growth charts.

Contract (format in ``docs/formats/usage_history.md``):

* One database file (default ``usage_history.db`` in the user state directory,
  ``~/.local/state/aiofs/`` on Linux; ``$XDG_STATE_HOME`` moves it) holds every stack's
  history: **one row per (stack, target, day)**, the day in UTC (``YYYY-MM-DD``). ``target``
  is the identity of the stack's bottom (``local:/data/store``), so two stacks that share a
  name over different stores (tests, a moved root) never mix.
* :meth:`UsageHistory.record` upserts the day's row: the last measurement of a day wins.
  :func:`aiofs.optimize.overview.overview` (``aiofs overview``, the API's overview, the
  dashboard) records every time it runs, since it has just paid for the walk; anything else
  that has the figures at hand may call ``record`` too.
* The database is in WAL mode, every write is one short transaction, so any number of
  processes may record and read at once. It starts with ``PRAGMA application_id`` =
  ``0x61667568`` ("afuh") and ``PRAGMA user_version`` = 1, and a ``meta`` table naming the
  format; a newer version or another format gives ``CONFIG_ERROR`` and changes nothing.
* The day is a parameter (``day=``), never read from a clock inside, so tests and
  back-fills say which day they mean.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import time
from pathlib import Path

import platformdirs

from aiofs.errors import ConfigError, InvalidArgument
from aiofs.sqlite_state import ThreadConnections

__all__ = ["UsageHistory", "default_history_path", "FORMAT", "FORMAT_VERSION", "APPLICATION_ID"]

FORMAT = "aiofs-usage-history"
FORMAT_VERSION = 1
APPLICATION_ID = 0x61667568  # "afuh"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage_history (
    stack          TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    day            TEXT    NOT NULL,
    logical_bytes  INTEGER NOT NULL,
    stored_bytes   INTEGER,
    files          INTEGER NOT NULL,
    by_type        TEXT    NOT NULL,
    recorded_at    REAL    NOT NULL,
    PRIMARY KEY (stack, target, day)
) WITHOUT ROWID
"""


def default_history_path() -> Path:
    """Where the history lives unless a path is given."""
    return Path(platformdirs.user_state_path("aiofs")) / "usage_history.db"


def _day(day: datetime.date | str | None) -> str:
    if day is None:
        return datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    if isinstance(day, datetime.datetime):
        return day.astimezone(datetime.timezone.utc).date().isoformat()
    if isinstance(day, datetime.date):
        return day.isoformat()
    try:
        return datetime.date.fromisoformat(str(day)).isoformat()
    except ValueError:
        raise InvalidArgument(f"a day is YYYY-MM-DD, got {day!r}") from None


class UsageHistory:
    """The usage history database (see the module doc); safe across threads and processes."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path or default_history_path())))
        self._connections = ThreadConnections(self.path, synchronous="NORMAL")
        self._init()

    def __repr__(self) -> str:
        return f"UsageHistory({self.path!r})"

    def _db(self) -> sqlite3.Connection:
        return self._connections.db()

    def _init(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with self._connections.tx() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("version", str(FORMAT_VERSION)),
                    ("created_at", repr(time.time())),
                ])
            elif rows.get("format") != FORMAT or int(rows.get("version", 0)) > FORMAT_VERSION:
                raise ConfigError(
                    f"{self.path} is not an {FORMAT} database of version <= {FORMAT_VERSION} "
                    f"(format={rows.get('format')!r}, version={rows.get('version')!r})")

    def close(self) -> None:
        """Close this thread's connection (the next call reopens it)."""
        self._connections.close()

    def record(self, stack: str, target: str, *, logical_bytes: int, files: int,
               stored_bytes: int | None = None, by_type: dict | None = None,
               day: datetime.date | str | None = None) -> dict:
        """Upsert the day's row for ``(stack, target)``; returns the row as stored."""
        if logical_bytes < 0 or files < 0 or (stored_bytes is not None and stored_bytes < 0):
            raise InvalidArgument("usage figures are non-negative")
        row = {
            "stack": stack, "target": target, "day": _day(day), "logical_bytes": int(logical_bytes),
            "stored_bytes": None if stored_bytes is None else int(stored_bytes),
            "files": int(files), "by_type": json.dumps(by_type or {}, sort_keys=True),
            "recorded_at": time.time(),
        }
        conn = self._db()
        conn.execute(
            "INSERT INTO usage_history VALUES (:stack, :target, :day, :logical_bytes, "
            ":stored_bytes, :files, :by_type, :recorded_at) "
            "ON CONFLICT (stack, target, day) DO UPDATE SET logical_bytes = excluded.logical_bytes, "
            "stored_bytes = excluded.stored_bytes, files = excluded.files, "
            "by_type = excluded.by_type, recorded_at = excluded.recorded_at", row)
        return self._row(tuple(row[k] for k in ("day", "logical_bytes", "stored_bytes", "files",
                                                  "by_type", "recorded_at")))

    @staticmethod
    def _row(values: tuple) -> dict:
        day, logical, stored, files, by_type, recorded = values
        return {"date": day, "logical_bytes": logical, "stored_bytes": stored, "files": files,
                "by_type": json.loads(by_type), "recorded_at": recorded}

    def rows(self, stack: str, target: str, days: int | None = None,
             until: datetime.date | str | None = None) -> list[dict]:
        """The rows of ``(stack, target)``, oldest first; the last ``days`` days up to ``until``."""
        sql = ("SELECT day, logical_bytes, stored_bytes, files, by_type, recorded_at "
               "FROM usage_history WHERE stack = ? AND target = ?")
        params: list = [stack, target]
        if days is not None:
            if days < 1:
                raise InvalidArgument(f"days must be at least 1, got {days!r}")
            end = datetime.date.fromisoformat(_day(until))
            sql += " AND day > ? AND day <= ?"
            params += [(end - datetime.timedelta(days=days)).isoformat(), end.isoformat()]
        sql += " ORDER BY day"
        return [self._row(r) for r in self._db().execute(sql, params)]

    def stacks(self) -> list[tuple[str, str]]:
        """Every ``(stack, target)`` with history."""
        return [tuple(r) for r in self._db().execute(
            "SELECT DISTINCT stack, target FROM usage_history ORDER BY stack, target")]

    @staticmethod
    def growth_per_day(rows: list[dict]) -> float | None:
        """Average growth of logical bytes per day between the first and last row."""
        if len(rows) < 2:
            return None
        first, last = rows[0], rows[-1]
        span = (datetime.date.fromisoformat(last["date"]) - datetime.date.fromisoformat(first["date"])).days
        if span <= 0:
            return None
        return (last["logical_bytes"] - first["logical_bytes"]) / span
