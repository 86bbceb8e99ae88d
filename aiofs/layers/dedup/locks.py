"""Store locks: writers and ``gc`` of one dedup store never run at the same time.

Locks are small JSON objects under ``.aiofs/dedup/locks/`` (so they work across machines
sharing a store on Drive or S3): ``w-<writer id>`` for a writer, ``gc-<writer id>`` for a
collection. Each records host, pid and the time it was written.

* A writer writes (or refreshes, every ``REFRESH`` seconds) its lock *before* a write and
  then looks for a ``gc`` lock; ``gc`` writes its lock and then looks for fresh writer
  locks. Whichever comes second sees the other, so a collection never deletes chunks a
  writer is about to reference.
* A lock not refreshed for ``STALE`` seconds is ignored (a crashed process). A writer whose
  own lock went stale reloads its chunk index before writing again: a ``gc`` may have run.
"""

from __future__ import annotations

import atexit
import json
import os
import posixpath
import socket
import time
import weakref

from aiofs.errors import Conflict
from aiofs.layer import internal_access

# Writers holding a lock, released at exit. Never from a finalizer: garbage collection may
# run in the middle of an iteration over the very store the release would modify.
_HOLDERS: weakref.WeakSet = weakref.WeakSet()

REFRESH = 300.0
STALE = 1800.0
GC_WAIT = 30.0


class StoreLocks:
    """The lock objects of one store, as seen by one writer (a Dedup instance)."""

    def __init__(self, store):
        self.store = store
        self.writer_lock = posixpath.join(store.locks_dir, f"w-{store.writer_id}")
        self.gc_lock = posixpath.join(store.locks_dir, f"gc-{store.writer_id}")
        self._refreshed_at: float | None = None

    def _body(self, kind: str) -> bytes:
        return json.dumps({"format": "aiofs-dedup-lock", "version": 1, "kind": kind,
                           "host": socket.gethostname(), "pid": os.getpid(),
                           "time": time.time()}).encode()

    def _locks(self) -> dict[str, dict]:
        """``name -> lock body`` of every readable lock in the store."""
        fs = self.store.fs
        with internal_access():
            for attempt in range(3):
                try:
                    names = [n.rstrip("/") for n in fs.ls(self.store.locks_dir, detail=False)]
                    break
                except FileNotFoundError:
                    return {}
                except (KeyError, RuntimeError):
                    # fsspec's memory fs is not thread-safe: listing while another thread
                    # removes a lock fails this way; list again
                    if attempt == 2:
                        raise
            out = {}
            for name in names:
                try:
                    out[name] = json.loads(fs.cat_file(name))
                except Exception:  # vanished or half-written by a crash: not a live lock
                    continue
        return out

    @staticmethod
    def _fresh(body: dict) -> bool:
        return time.time() - float(body.get("time", 0)) < STALE

    def writer_enter(self) -> None:
        """Before a write: our lock is fresh and no ``gc`` is running (waits a little)."""
        now = time.time()
        if self._refreshed_at is not None and now - self._refreshed_at < REFRESH:
            return
        if self._refreshed_at is not None and now - self._refreshed_at >= STALE:
            self.store.refresh_index()  # our lock lapsed: a gc may have removed chunks
        with internal_access():
            self.store.fs.makedirs(self.store.locks_dir, exist_ok=True)
            self.store.fs.pipe_file(self.writer_lock, self._body("writer"))
        self._refreshed_at = now
        _HOLDERS.add(self)
        deadline = time.monotonic() + GC_WAIT
        while True:
            running = [n for n, b in self._locks().items()
                       if posixpath.basename(n).startswith("gc-") and n != self.gc_lock
                       and self._fresh(b)]
            if not running:
                return
            if time.monotonic() > deadline:
                self._refreshed_at = None
                raise Conflict(f"the dedup store is being collected ({running[0]}); "
                               "try again when gc has finished", self.store.root)
            time.sleep(0.5)  # gc holds the store: poll until it is done, bounded above
            self.store.refresh_index()

    def gc_enter(self) -> None:
        """Before ``gc`` deletes anything: no other writer may hold a fresh lock."""
        with internal_access():
            self.store.fs.makedirs(self.store.locks_dir, exist_ok=True)
            self.store.fs.pipe_file(self.gc_lock, self._body("gc"))
        others = [(n, b) for n, b in self._locks().items()
                  if n not in (self.gc_lock, self.writer_lock) and self._fresh(b)]
        if others:
            self.gc_exit()
            name, body = others[0]
            raise Conflict(f"the dedup store is in use by {body.get('kind')} pid {body.get('pid')} "
                           f"on {body.get('host')} ({posixpath.basename(name)}); gc needs it idle",
                           self.store.root)

    def gc_exit(self) -> None:
        with internal_access():
            try:
                self.store.fs.rm_file(self.gc_lock)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        """Remove our writer lock (at close or exit)."""
        if self._refreshed_at is None:
            return
        self._refreshed_at = None
        _HOLDERS.discard(self)
        with internal_access():
            try:
                self.store.fs.rm_file(self.writer_lock)
            except Exception:
                pass


@atexit.register
def _release_all() -> None:
    for locks in list(_HOLDERS):
        try:
            locks.release()
        except Exception:  # exiting: a lock left behind goes stale on its own
            pass
