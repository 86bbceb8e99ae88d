"""The offline layer's background syncer: applies the operation journal to the remote.

One thread per :class:`~aiofs.layers.offline.Offline` instance; only the one holding the
file lock ``CACHE_DIR/syncer.lock`` (``flock``, released by the kernel when its process
dies) works, so several processes may share a cache directory. It takes operations in
``seq`` order; a run of uploads to distinct paths goes down as one bulk ``put`` (concurrent
on async targets such as s3fs). Each operation leaves the journal in the transaction that
records its result. Failures back off exponentially (``retry_base * 2**attempts``, capped at
``retry_cap``, full jitter); the head of the queue waits for its retry, so operations stay
in order. A connection-kind failure also triggers a probe, which may switch the layer
offline; offline, the syncer only probes (every ``probe_interval``) until the remote is back.

An operation interrupted after the remote applied it (a crash, a lost response) is retried;
for an upload, a remote copy that no longer matches the base but holds exactly our bytes is
recognised as our own and the operation completes without a second upload or a conflict.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import threading
import time
import weakref

from aiofs.errors import SyncFailed
from aiofs.layer import internal_access, stamp_of
from aiofs.layers.offline import conflicts as conflict_rules
from aiofs.layers.offline.journal import like_prefix
# the package imports layer first; layer imports this module only when an Offline starts
from aiofs.layers.offline.layer import _remote_times, is_connection_error

log = logging.getLogger("aiofs.offline")

CONCRETE = lambda base: base not in (None, "@chain", "@any")  # noqa: E731
COMPARE_CHUNK = 8 << 20


class Syncer:
    """The uploader thread of one Offline layer (see the module docstring)."""

    def __init__(self, layer):
        self._ref = weakref.ref(layer)
        self.lock_path = os.path.join(layer.cache_dir, "syncer.lock")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self.holding = False
        self._next_probe = 0.0
        self._next_maintenance = 0.0
        self._recent_listing = None  # (monotonic time, parents, {path: entry}) after a bulk put

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (again, after :meth:`stop`)."""
        if self.alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aiofs-offline-syncer", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """The thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def kick(self) -> None:
        """Wake the thread now (new work, or back online)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread and release the lock."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        self._release()

    def wait_progress(self, timeout: float) -> None:
        """Block until the thread finished a step (or ``timeout``)."""
        with self._progress:
            self._progress.wait(timeout)

    def _try_lock(self) -> bool:
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        return True

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
        self.holding = False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                layer = self._ref()
                if layer is None:
                    break
                try:
                    if not self.holding:
                        self.holding = self._try_lock()
                        if self.holding:
                            self._recover(layer)
                    delay = self._step(layer) if self.holding else 0.5
                except Exception:  # never let the thread die: log and go on
                    log.exception("offline syncer step failed")
                    delay = 1.0
                del layer
                with self._progress:
                    self._progress.notify_all()
                if delay > 0:
                    self._wake.wait(delay)
                self._wake.clear()
        finally:
            self._release()
            with self._progress:
                self._progress.notify_all()

    def _recover(self, layer) -> None:
        """At lock time: operations a dead syncer left 'uploading' are queued again, and
        data files nothing references (a writer killed before its commit) are swept."""
        with layer._journal.tx() as conn:
            # attempts + 1: the retry first checks whether the remote already has the bytes
            conn.execute("UPDATE ops SET state = 'queued', attempts = attempts + 1 "
                         "WHERE state = 'uploading'")
        with contextlib.suppress(Exception):
            conn = layer._journal.db()
            referenced = {r[0] for r in conn.execute(
                "SELECT blob FROM entries WHERE blob IS NOT NULL UNION SELECT blob FROM ops "
                "WHERE blob IS NOT NULL")}
            layer._store.sweep(referenced)

    # -- one step --------------------------------------------------------------------------

    def _step(self, layer) -> float:
        """Do one unit of work; returns how long to sleep before the next."""
        now = time.monotonic()
        if not layer.online:
            if now >= self._next_probe:
                self._next_probe = now + layer.probe_interval
                layer.probe()
            if not layer.online:
                return max(0.01, self._next_probe - time.monotonic())
        conn = layer._journal.db()
        wall = time.time()
        ops = [dict(r) for r in conn.execute(
            "SELECT * FROM ops WHERE state != 'error' OR next_try <= ? ORDER BY seq LIMIT ?",
            (wall, layer.batch_files + 1))]
        if not ops:
            if now >= self._next_maintenance:
                self._next_maintenance = now + 300
                with contextlib.suppress(Exception):
                    layer.evict()
                with contextlib.suppress(Exception):
                    layer.refresh_pins()
            if now - layer._last_activity < 60 and now >= self._next_probe:
                # heartbeat while in use: notice a lost connection even when nothing is queued
                self._next_probe = now + layer.heartbeat_interval
                layer.probe()
            return min(0.25, layer.heartbeat_interval) if layer.heartbeat_interval > 0 else 0.25
        head = ops[0]
        if head["next_try"] > wall:
            return min(0.5, head["next_try"] - wall)
        batch = [head]
        if head["kind"] == "put":
            paths, total = {head["path"]}, head["size"]
            for op in ops[1:]:
                if (op["kind"] != "put" or op["path"] in paths or op["next_try"] > wall
                        or len(batch) >= layer.batch_files or total + op["size"] > layer.batch_bytes):
                    break
                batch.append(op)
                paths.add(op["path"])
                total += op["size"]
        try:
            with internal_access():  # layers above keep their data under .aiofs/: sync it too
                if len(batch) > 1:
                    self._puts(layer, batch)
                else:
                    self._recent_listing = None
                    self._one(layer, head)
        except Exception as exc:
            self._failed(layer, batch, exc)
        return 0.0

    def _failed(self, layer, batch, exc: BaseException) -> None:
        connection = is_connection_error(exc) or isinstance(exc, SyncFailed)
        now = time.time()
        text = f"{type(exc).__name__}: {exc}"
        with layer._journal.tx() as conn:
            for op in batch:
                attempts = op["attempts"] + 1
                delay = random.uniform(0, min(layer.retry_cap, layer.retry_base * (2 ** attempts)))
                parked = not connection and attempts >= layer.max_attempts
                conn.execute("UPDATE ops SET attempts = ?, next_try = ?, state = ?, error = ? "
                             "WHERE seq = ?",
                             (attempts, now + (layer.retry_cap if parked else delay),
                              "error" if parked else "queued", text, op["seq"]))
        if connection:
            layer.probe()
        else:
            log.warning("offline sync of %s %r failed: %s", batch[0]["kind"], batch[0]["path"], text)

    def _call(self, fn, *args, **kwargs):
        """A remote call with two quick retries of connection-kind errors (a flaky link)."""
        for attempt in range(3):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == 2 or not is_connection_error(exc):
                    raise
                time.sleep(0.005 * (attempt + 1))

    def _info(self, layer, key: str):
        """The remote entry of ``key``, ``None`` if absent."""
        with contextlib.suppress(Exception):
            layer.fs.invalidate_cache(key)
        try:
            return self._call(layer.fs.info, key)
        except FileNotFoundError:
            return None

    def _tree_stamps(self, layer, key: str) -> dict[str, str]:
        """``{path: stamp}`` of the files below ``key`` on the remote after a tree move (the
        moved files' stamps may have changed with their names); ``{}`` when unreadable."""
        with contextlib.suppress(Exception):
            layer.fs.invalidate_cache(key)
        try:
            found = self._call(layer.fs.find, key, detail=True)
        except Exception:  # best effort: without stamps, the next edit is not checked
            return {}
        return {layer.fs._strip_protocol(name): stamp_of(entry) for name, entry in found.items()
                if entry.get("type") != "directory" and stamp_of(entry)}

    def _stamp_after(self, layer, key: str) -> str | None:
        try:
            entry = self._info(layer, key)
        except Exception as exc:
            if is_connection_error(exc):
                return None  # unknown: the next revalidation learns it
            raise
        return stamp_of(entry) if entry else None

    def _mark_uploading(self, layer, batch) -> list:
        """Claim uploads: only ops still in the journal with the same data become
        'uploading' (a write may have coalesced one away since the queue was read); returns
        those. Only this thread, holding the lock, sets 'uploading', and every step ends its
        uploads: one still 'uploading' at the next step was abandoned, and is claimed again
        (a retry recognises an upload that landed)."""
        claimed = []
        with layer._journal.tx() as conn:
            for op in batch:
                cursor = conn.execute(
                    "UPDATE ops SET state = 'uploading' WHERE seq = ? AND blob IS ?",
                    (op["seq"], op["blob"]))
                if cursor.rowcount == 1:
                    claimed.append(op)
        return claimed

    # -- operations ------------------------------------------------------------------------

    def _one(self, layer, op) -> None:
        kind, key = op["kind"], op["path"]
        if kind == "put":
            if self._mark_uploading(layer, [op]):
                self._put(layer, op)
        elif kind == "rm":
            self._rm(layer, op)
        elif kind == "rmtree":
            with contextlib.suppress(FileNotFoundError):
                self._call(layer.fs.rm, key, recursive=True)
            self._done(layer, op, None)
        elif kind == "rmdir":
            try:
                self._call(layer.fs.rmdir, key)
            except FileNotFoundError:
                pass
            except OSError as exc:  # not empty on the remote: files this cache never saw
                if is_connection_error(exc):
                    raise
            self._done(layer, op, None)
        elif kind == "mkdir":
            with contextlib.suppress(FileExistsError):
                self._call(layer.fs.makedirs, key, exist_ok=True)
            self._done(layer, op, None)
        elif kind == "mv":
            if CONCRETE(op["base"]):
                remote = self._info(layer, op["path2"])
                if op["attempts"] > 0 and self._moved_already(layer, op, remote):
                    self._done(layer, op, stamp_of(remote))  # an earlier attempt landed
                    return
                if self._changed(op, remote) and conflict_rules.decide(
                        layer.conflict_policy, op["created"],
                        _remote_times(remote)[0] if remote else None) != "overwrite":
                    self._mv_conflict(layer, op, remote)
                    return
            try:
                self._call(layer.fs.mv, key, op["path2"])
            except FileNotFoundError:
                self._mv_source_gone(layer, op)
                return
            self._done(layer, op, self._stamp_after(layer, op["path2"]))
        elif kind == "mvtree":
            with contextlib.suppress(FileNotFoundError):
                self._call(layer.fs.mv, key, op["path2"], recursive=True)
            self._done(layer, op, self._tree_stamps(layer, op["path2"]))
        else:
            raise SyncFailed(f"unknown journal operation {kind!r}", key)

    def _changed(self, op, remote) -> bool:
        base = op["base"]
        if not CONCRETE(base):
            return False
        if base == "absent":
            return remote is not None
        return remote is not None and stamp_of(remote) != base

    def _put(self, layer, op, remote=..., retry: bool = False) -> None:
        key = op["path"]
        retry = retry or op["attempts"] > 0
        if remote is ...:
            remote = self._info(layer, key) if CONCRETE(op["base"]) or retry else None
        if retry and self._same_content(layer, key, remote, op):
            # an earlier attempt landed before it failed (lost response, crash): never twice
            self._done(layer, op, stamp_of(remote))
            return
        if self._changed(op, remote):
            if self._same_content(layer, key, remote, op):
                self._done(layer, op, stamp_of(remote))  # our own earlier, interrupted upload
                return
            self._conflict(layer, op, remote)
            return
        self._call(layer.fs.put_file, layer._store.path(op["blob"]), key)
        self._done(layer, op, self._stamp_after(layer, key))

    def _same_content(self, layer, key, remote, op) -> bool:
        if remote is None or remote.get("type") == "directory" or int(remote.get("size") or 0) != op["size"]:
            return False
        path = layer._store.path(op["blob"])
        with open(path, "rb") as f:
            offset = 0
            while offset < op["size"] or offset == 0:
                end = min(op["size"], offset + COMPARE_CHUNK)
                theirs = self._call(layer.fs.cat_file, key, start=offset, end=end) if end > offset else b""
                if f.read(end - offset) != theirs:
                    return False
                offset = end
                if end >= op["size"]:
                    break
        return True

    def _puts(self, layer, batch) -> None:
        """A run of uploads to distinct paths: one stamp check per directory, one bulk put."""
        batch = self._mark_uploading(layer, batch)
        if not batch:
            return
        parents = sorted({layer._parent(op["path"]) for op in batch})
        remote = {}
        if any(CONCRETE(op["base"]) for op in batch):
            # the listing taken right after the previous batch (same directories, seconds
            # ago) doubles as this batch's check: one LIST per directory per batch, not two
            recent = self._recent_listing
            if recent is not None and recent[1] == parents and time.monotonic() - recent[0] < 5.0:
                remote = recent[2]
            else:
                remote = self._listings(layer, parents)
        self._recent_listing = None
        clear, special = [], []
        for op in batch:
            (special if self._changed(op, remote.get(op["path"])) else clear).append(op)
        if clear:
            try:
                layer.fs.put([layer._store.path(op["blob"]) for op in clear],
                             [op["path"] for op in clear])
            except Exception as exc:
                if not is_connection_error(exc) and not isinstance(exc, (OSError, ValueError)):
                    raise
                # some may have landed: finish one by one (a landed one is recognised as ours)
                for i, op in enumerate(clear):
                    try:
                        self._put(layer, op, retry=True)
                    except Exception as one:
                        if is_connection_error(one):
                            # the link is down: this one and the rest wait for it (queued
                            # again; left 'uploading', the head of the queue would stall)
                            self._failed(layer, clear[i:], one)
                            break
                        self._failed(layer, [op], one)
                return
            after = self._listings(layer, parents)
            self._recent_listing = (time.monotonic(), parents, after)
            self._done_many(layer, [(op, stamp_of(after[op["path"]]) if op["path"] in after else None)
                                    for op in clear])
        for op in special:
            self._put(layer, op, remote.get(op["path"]))

    def _listings(self, layer, parents) -> dict:
        out = {}
        for parent in parents:
            with contextlib.suppress(Exception):
                layer.fs.invalidate_cache(parent)
            try:
                entries = self._call(layer.fs.ls, parent, detail=True)
            except FileNotFoundError:
                continue
            for entry in entries:
                out[layer.fs._strip_protocol(entry["name"])] = entry
        return out

    def _rm(self, layer, op) -> None:
        key = op["path"]
        remote = self._info(layer, key)
        if remote is None or remote.get("type") == "directory":
            self._done(layer, op, None)
            return
        if CONCRETE(op["base"]) and op["base"] != "absent" and stamp_of(remote) != op["base"] \
                and layer.conflict_policy != conflict_rules.LOCAL_WINS:
            # changed on the remote after this cache deleted it: the newer remote copy stays
            with layer._journal.tx() as conn:
                conn.execute("DELETE FROM ops WHERE seq = ?", (op["seq"],))
                self._record(conn, key, None, "remote-kept",
                             "deleted here, changed on the remote: the remote version stays")
                if not layer._pending_on(conn, key):
                    released = layer._upsert_remote(conn, key, remote, time.time())
                    layer._ensure_parents(conn, key, time.time(), local=False)
                    layer._bump(conn, [key])
                    layer._unreferenced(conn, released)
            return
        with contextlib.suppress(FileNotFoundError):
            self._call(layer.fs.rm_file, key)
        self._done(layer, op, None)

    def _mv_source_gone(self, layer, op) -> None:
        """The remote lost the source of a move: upload the local copy instead, if we have it."""
        dst = op["path2"]
        with layer._journal.tx() as conn:
            row = layer._row(conn, dst)
            if row is not None and row["cached"] == "full" and row["blob"]:
                conn.execute("UPDATE ops SET kind = 'put', path = ?, path2 = NULL, blob = ?, size = ?, "
                             "base = '@any', state = 'queued' WHERE seq = ?",
                             (dst, row["blob"], row["size"], op["seq"]))
                return
            conn.execute("DELETE FROM ops WHERE seq = ?", (op["seq"],))
            self._record(conn, dst, None, "lost", f"moved from {op['path']!r}, which the remote no "
                         "longer has, and this cache held no copy")
            if not layer._pending_on(conn, dst):
                layer._unreferenced(conn, layer._forget_tree(conn, dst))
            layer._bump(conn, [dst])

    def _moved_already(self, layer, op, remote) -> bool:
        """The remote shows this move done: the source is gone and the destination holds
        exactly our data (an earlier attempt landed and its answer was lost)."""
        row = layer._row(layer._journal.db(), op["path2"])
        if row is None or row["cached"] != "full" or not row["blob"]:
            return False
        if self._info(layer, op["path"]) is not None:
            return False
        return self._same_content(layer, op["path2"], remote, {"blob": row["blob"], "size": row["size"]})

    def _mv_conflict(self, layer, op, remote) -> None:
        """A move onto a destination the remote changed since this cache saw it (someone
        put a file there): theirs stays at the destination, ours moves to a conflicted
        copy next to it. Under every policy but an overwriting one: a move never drops
        data (``remote-wins`` keeps ours as the copy too)."""
        src, dst = op["path"], op["path2"]
        copy = self._free_copy_name(layer, dst)
        try:
            self._call(layer.fs.mv, src, copy)
        except FileNotFoundError:
            # the source is gone (an earlier attempt moved it and its answer was lost, or
            # someone removed it): upload our data under the copy's name, never over theirs
            row = layer._row(layer._journal.db(), dst)
            if row is None or row["cached"] != "full" or not row["blob"]:
                self._mv_source_gone(layer, op)  # no data here either: recorded as lost
                return
            self._call(layer.fs.put_file, layer._store.path(row["blob"]), copy)
        copy_stamp = self._stamp_after(layer, copy)
        with layer._journal.tx() as conn:
            now = time.time()
            conn.execute("DELETE FROM ops WHERE seq = ?", (op["seq"],))
            self._record(conn, dst, copy, "kept-both",
                         f"moved here from {src!r}; the remote had a new file here: ours is the copy")
            self._resolve_chain(layer, conn, src, "absent")
            self._resolve_chain(layer, conn, dst, op["base"])  # a later edit here conflicts the same way
            released = []
            row = layer._row(conn, dst)
            layer._ensure_parents(conn, copy, now, local=False)
            pending = layer._pending_on(conn, dst)
            # the copy holds what was moved: the local data if nothing newer is queued here
            blob = row["blob"] if row is not None and not pending else None
            conn.execute(
                "INSERT OR REPLACE INTO entries (path, parent, type, size, mtime, created, stamp, blob, "
                "cached, cached_bytes, dirty, validated, accessed) VALUES "
                "(?, ?, 'file', ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (copy, layer._parent(copy), row["size"] if row is not None else 0, now, now,
                 copy_stamp, blob, row["cached"] if blob else "none",
                 row["cached_bytes"] if blob else 0, now if copy_stamp else 0.0, now))
            if not pending:
                conn.execute("UPDATE entries SET blob = NULL, cached = 'none', cached_bytes = 0, "
                             "stamp = NULL, dirty = 0 WHERE path = ?", (dst,))
                if remote is not None:
                    released += layer._upsert_remote(conn, dst, remote, now)
                else:
                    released += layer._forget_tree(conn, dst)
            layer._bump(conn, [src, dst, copy])
            released = layer._unreferenced(conn, released)
        layer._finish(released)

    def _free_copy_name(self, layer, key: str) -> str:
        """A conflicted-copy name for ``key`` that the remote does not hold yet."""
        copy = layer.fs._strip_protocol(conflict_rules.conflicted_copy_name(key, time.time(), layer.host))
        n = 2
        while self._info(layer, copy) is not None:
            copy = layer.fs._strip_protocol(
                conflict_rules.conflicted_copy_name(key, time.time(), f"{layer.host} {n}"))
            n += 1
        return copy

    def _conflict(self, layer, op, remote) -> None:
        key = op["path"]
        remote_mtime = _remote_times(remote)[0] if remote is not None else None
        action = conflict_rules.decide(layer.conflict_policy, op["created"], remote_mtime)
        if action == "overwrite":
            self._call(layer.fs.put_file, layer._store.path(op["blob"]), key)
            stamp = self._stamp_after(layer, key)
            with layer._journal.tx() as conn:
                self._record(conn, key, None, "local-won", f"policy {layer.conflict_policy}")
            self._done(layer, op, stamp)
            return
        if action == "drop":
            with layer._journal.tx() as conn:
                conn.execute("DELETE FROM ops WHERE seq = ?", (op["seq"],))
                self._record(conn, key, None, "remote-won", f"policy {layer.conflict_policy}: "
                             f"the local edit of {op['size']} bytes was dropped")
                self._resolve_chain(layer, conn, key, stamp_of(remote) if remote else "absent")
                released = [op["blob"]]
                if not layer._pending_on(conn, key):
                    row = layer._row(conn, key)
                    if row is not None:
                        released.append(row["blob"])
                    if remote is not None:
                        released += layer._upsert_remote(conn, key, remote, time.time())
                    else:
                        released += layer._forget_tree(conn, key)
                layer._bump(conn, [key])
                released = layer._unreferenced(conn, released)
            layer._finish(released)
            return
        copy = self._free_copy_name(layer, key)
        self._call(layer.fs.put_file, layer._store.path(op["blob"]), copy)
        copy_stamp = self._stamp_after(layer, copy)
        with layer._journal.tx() as conn:
            now = time.time()
            conn.execute("DELETE FROM ops WHERE seq = ?", (op["seq"],))
            layer._ensure_parents(conn, copy, now, local=False)
            conn.execute(
                "INSERT OR REPLACE INTO entries (path, parent, type, size, mtime, created, stamp, blob, "
                "cached, cached_bytes, dirty, validated, accessed) VALUES "
                "(?, ?, 'file', ?, ?, ?, ?, ?, 'full', ?, 0, ?, ?)",
                (copy, layer._parent(copy), op["size"], op["created"], op["created"], copy_stamp,
                 op["blob"], op["size"], now, now))
            self._record(conn, key, copy, "kept-both",
                         "the remote changed since this edit's base; the edit is the copy")
            # a later queued edit of the same file conflicts the same way
            self._resolve_chain(layer, conn, key, op["base"])
            released = []
            if not layer._pending_on(conn, key):
                row = layer._row(conn, key)
                if row is not None and row["blob"] != op["blob"]:
                    released.append(row["blob"])
                if remote is not None:
                    conn.execute("UPDATE entries SET blob = NULL, cached = 'none', cached_bytes = 0, "
                                 "stamp = NULL WHERE path = ?", (key,))
                    released += layer._upsert_remote(conn, key, remote, now)
                else:
                    released += layer._forget_tree(conn, key)
            layer._bump(conn, [key, copy])
            released = layer._unreferenced(conn, released)
        layer._finish(released)

    def _record(self, conn, key, copy, outcome, detail) -> None:
        layer = self._ref()
        conn.execute("INSERT INTO conflicts (path, copy, policy, outcome, detected, detail) VALUES "
                     "(?, ?, ?, ?, ?, ?)", (key, copy, layer.conflict_policy if layer else "?",
                                            outcome, time.time(), detail))
        log.warning("offline conflict on %r: %s%s", key, outcome, f" -> {copy!r}" if copy else "")

    # -- completion ------------------------------------------------------------------------

    @staticmethod
    def _resolve_chain(layer, conn, key: str, base: str | None) -> None:
        """The next queued upload of ``key``, if based on "whatever came before", now has a
        concrete base; unless a delete or move of a directory above ``key`` is queued before
        it: that comes first (and its completion makes the base ``@any``). The file the
        upload replaces is then not the one this base describes."""
        following = conn.execute("SELECT MIN(seq) FROM ops WHERE path = ? OR path2 = ?",
                                 (key, key)).fetchone()[0]
        if following is None or layer._tree_op_above(conn, key, before=following):
            return
        conn.execute("UPDATE ops SET base = ? WHERE base = '@chain' AND kind = 'put' AND seq = ?",
                     (base or "@any", following))

    def _done(self, layer, op, stamp) -> None:
        self._done_many(layer, [(op, stamp)])

    def _done_many(self, layer, results) -> None:
        with layer._journal.tx() as conn:
            now = time.time()
            released, touched = [], []
            for op, stamp in results:
                conn.execute("DELETE FROM ops WHERE seq = ?", (op["seq"],))
                kind, key = op["kind"], op["path"]
                if kind == "put":
                    target = key
                    self._resolve_chain(layer, conn, key, stamp)
                elif kind == "mv":
                    target = op["path2"]
                    self._resolve_chain(layer, conn, target, stamp)
                    self._resolve_chain(layer, conn, key, "absent")
                else:
                    target = key
                    self._resolve_chain(layer, conn, key, "absent" if kind.startswith("rm") else None)
                    if kind in ("rmtree", "mvtree"):
                        scope = op["path2"] if kind == "mvtree" else key
                        conn.execute("UPDATE ops SET base = '@any' WHERE base = '@chain' AND "
                                     "path LIKE ? ESCAPE '\\'", (like_prefix(scope),))
                row = layer._row(conn, target)
                if row is not None and row["type"] == "file" and kind in ("put", "mv"):
                    if kind == "mv" or row["blob"] == op["blob"]:
                        conn.execute("UPDATE entries SET stamp = ?, validated = ? WHERE path = ?",
                                     (stamp, now, target))
                    elif not layer._tree_op_above(conn, target):
                        # a newer local version of the same file: based on what we uploaded
                        # (after a queued delete or move above it, the file there is another)
                        conn.execute("UPDATE entries SET stamp = ? WHERE path = ?", (stamp, target))
                if row is not None and not layer._pending_on(conn, target):
                    conn.execute("UPDATE entries SET dirty = 0 WHERE path = ?", (target,))
                if kind in ("mvtree", "mkdir"):
                    # a listing (or lookup) of the moved tree or the new directory taken
                    # while the remote did not have it yet must not be merged now: it would
                    # drop them from the local view. Every directory there changes version.
                    conn.execute(
                        "INSERT INTO dirs (path, listed, version) SELECT path, 0, 1 FROM entries "
                        "WHERE type = 'directory' AND (path = ? OR path LIKE ? ESCAPE '\\') "
                        "ON CONFLICT(path) DO UPDATE SET version = version + 1",
                        (target if kind == "mkdir" else op["path2"],
                         like_prefix(target if kind == "mkdir" else op["path2"])))
                if kind == "mvtree":
                    # the files the move carried were dirty until now (the remote had
                    # nothing at their new names): now it has them, under the stamps read
                    # after the move (``stamp`` is that dict here; unknown: NULL)
                    for moved in conn.execute(
                            "SELECT path FROM entries WHERE dirty = 1 AND type = 'file' AND "
                            "path LIKE ? ESCAPE '\\'",
                            (like_prefix(op["path2"]),)).fetchall():
                        if not layer._pending_on(conn, moved["path"]):
                            conn.execute("UPDATE entries SET dirty = 0, stamp = ? WHERE path = ?",
                                         ((stamp or {}).get(moved["path"]), moved["path"]))
                released.append(op["blob"])
                # both ends of a move: a listing taken before this completed must not be
                # merged over it (it would bring back the moved-away source)
                touched += [p for p in (key, op["path2"]) if p]
            layer._bump(conn, touched)
            released = layer._unreferenced(conn, released)
        layer._finish(released)
