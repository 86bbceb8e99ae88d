"""Per-file locks of the Versioning layer: snapshot and replace never interleave.

A version is "the content a write replaced", so taking the snapshot and committing the new
content must happen as one step per file; otherwise two writers could both copy the same old
content and one of the new contents would vanish unrecorded. Writers of one machine (threads
or processes) exclude each other with ``flock`` on one of :data:`STRIPES` lock files in a
local directory keyed by the store's identity (released by the kernel if a process dies, so
nothing goes stale). Locks are re-entrant per thread. Version *numbers* are claimed by
exclusive creation in the store itself (see the layer), so numbering stays unique even
between machines sharing a store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: threads of this process still exclude each other
    fcntl = None

STRIPES = 256

_thread_locks: dict[str, threading.RLock] = {}
_thread_locks_guard = threading.Lock()


def stripe_of(key: str) -> int:
    """The lock stripe of a path key (hex): its first byte."""
    return int(key[:2], 16) % STRIPES


class StripeLocks:
    """``flock``-based, re-entrant per thread, striped locks under ``directory``."""

    def __init__(self, directory: str, identity: str):
        self.directory = os.path.join(directory, hashlib.sha256(identity.encode()).hexdigest()[:24])
        self._local = threading.local()

    def _held(self) -> dict[int, list]:
        held = getattr(self._local, "held", None)
        if held is None or getattr(self._local, "pid", None) != os.getpid():
            held = self._local.held = {}
            self._local.pid = os.getpid()
        return held

    def _thread_lock(self, stripe: int) -> threading.RLock:
        name = f"{self.directory}/{stripe:02x}"
        with _thread_locks_guard:
            lock = _thread_locks.get(name)
            if lock is None:
                lock = _thread_locks[name] = threading.RLock()
            return lock

    @contextlib.contextmanager
    def hold(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold the locks of every key (in stripe order, so two holders never deadlock)."""
        held = self._held()
        taken: list[int] = []
        try:
            for stripe in sorted({stripe_of(k) for k in keys}):
                if stripe in held:
                    held[stripe][1] += 1
                    taken.append(stripe)
                    continue
                # threads of this process first (cheap), then other processes via flock
                thread_lock = self._thread_lock(stripe)
                thread_lock.acquire()
                fd = None
                try:
                    if fcntl is not None:
                        os.makedirs(self.directory, exist_ok=True)
                        fd = os.open(f"{self.directory}/{stripe:02x}.lock",
                                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                        fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    if fd is not None:
                        os.close(fd)
                    thread_lock.release()
                    raise
                held[stripe] = [(fd, thread_lock), 1]
                taken.append(stripe)
            yield
        finally:
            for stripe in reversed(taken):
                entry = held[stripe]
                entry[1] -= 1
                if entry[1] == 0:
                    del held[stripe]
                    fd, thread_lock = entry[0]
                    if fd is not None:
                        os.close(fd)  # closing the descriptor releases the flock
                    thread_lock.release()
