"""``Versioning``: every overwrite, delete and rename over a file keeps the old content.

Contract (DESIGN.md "The layer contract"; format in ``docs/formats/versioning.md``):

* **Same bytes, same namespace.** Reads, listings and sizes pass straight through; the layer
  changes what a write *does*, never what a reader sees.
* **Versions are copies made by the target.** Before a write replaces a file (``open('wb')``,
  ``pipe_file``, ``pipe``, ``put_file``, ``cp_file``/``mv`` onto it, ``touch``), the old
  content is copied with ``target.cp_file`` to ``.aiofs/versions/files/<k>/<key>/data/``;
  with Dedup below that is a manifest copy, so a version costs a few hundred bytes plus the
  chunks the new content does not share. A delete *moves* the file there instead
  (``target.mv``: nothing is copied). ``key`` is a hash of the path, so one file's history
  is one directory: reading it costs O(that file's versions), never a scan of the store.
* **Records are small immutable JSON objects** (``v00000003.json``) created exclusively
  (``mode="create"``): the number is claimed by whoever creates it first, so numbering stays
  unique across threads, processes and machines. Numbers are never reused, so a listing of
  names (no ``stat``, no reads) tells which cached records still hold: ``versions()`` costs
  one directory listing. Pins are marker objects beside them (``v00000003.pin``). A record
  is created after its data and removed before it, so a record never points at missing data.
* **Snapshot and replace are one step per file**: writers of one machine hold a per-file
  lock (:mod:`.locks`) from the snapshot to the commit, so concurrent writers each record
  the content they replaced and none is lost.
* **Retention is part of the write**: after a new version, unpinned versions beyond
  ``max_versions`` (oldest first) and, with ``keep_days``, those replaced longer ago are
  removed. Pinned versions are kept beyond both.
* **Read-only virtual directory** ``.versions/`` (``versions_dir``) at the stack root:
  ``.versions/<path>/`` lists a file's versions as files ``v0003 2026-11-29 101500.txt``.
  Not listed in the root unless ``show_versions_dir=True``, so ``find``/``du``/recursive
  copies never see it; writes below it give ``READ_ONLY``. Copying an entry over its own
  file is a revert (a restore if the file is gone), so a revert made from the top of a stack
  passes through every layer above (a quota counts it).
* A target whose ``open('wb')`` replaces the file at once (no ``atomic_writes``
  capability, e.g. fsspec's memory filesystem) gets a staging object moved into place at
  close, so the old content still exists when the snapshot is taken.
* Internal paths (``.aiofs/``) are passed through untouched and never versioned.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime
import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import threading
import time

import blake3
import fsspec
import platformdirs
from fsspec.spec import AbstractBufferedFile

from aiofs.errors import (
    AlreadyExists, InvalidArgument, IsADirectory, NotFound, ReadOnly, VersionNotFound,
)
from aiofs.layer import (
    ATOMIC_WRITES, INTERNAL_DIR, Layer, capabilities_of, has_glob, hide_internal_path,
    WriteOnlyFile, internal_access, is_internal, refuse_internal_write, stamp_of,
    target_identity,
)
from aiofs.layers.versioning.locks import StripeLocks

__all__ = ["Versioning", "VERSIONS", "ROOT", "path_key"]

VERSIONS = "versions"  # capability flag: this stack keeps old versions of files
ROOT = f"{INTERNAL_DIR}/versions"
RECORD_FORMAT = "aiofs-version"
HEAD_FORMAT = "aiofs-version-head"
DELETED_FORMAT = "aiofs-version-deleted"
FORMAT_VERSION = 1
CHANGES = ("overwrite", "delete", "rename", "revert", "autosave")  # a record's "change"
DAY = 86400.0
RECORD_CACHE_FILES = 1024
LEFTOVER_AGE = 3600.0  # seconds: an interrupted write's objects are offered to cleanup after this
HASH_BLOCK = 8 << 20

_RECORD_RE = re.compile(r"^v(\d{8,})\.json$")
_PIN_RE = re.compile(r"^v(\d{8,})\.pin$")
_CLAIMED_RE = re.compile(r"^v(\d{8,})\.(?:json|void)$")
_VNAME_RE = re.compile(r"^v(\d+)(?: .*)?$")

# Metadata for writes made inside ``Versioning.context(...)`` (per thread / task).
_write_context: contextvars.ContextVar[dict] = contextvars.ContextVar(
    "aiofs_versioning_context", default={})

# Keyword arguments of open/pipe_file/put_file that describe a write (popped, never passed down).
META_KWARGS = ("user", "description", "autosave")


def path_key(rel: str) -> str:
    """The key of a path's history: hex sha256 of its root-relative name (first 32 digits)."""
    return hashlib.sha256(rel.strip("/").encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _now() -> float:
    return time.time()


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat()


def _entry_time(entry: dict) -> float | None:
    """Modification time (epoch seconds) of a target entry, whatever the target calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = entry.get(key)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def _extension(rel: str) -> str:
    ext = posixpath.splitext(posixpath.basename(rel))[1]
    # only a plain extension travels into object names (no spaces or odd characters)
    return ext if re.fullmatch(r"\.[A-Za-z0-9_+-]{1,16}", ext or "") else ""


def version_file_name(rel: str, number: int, timestamp: float) -> str:
    """The name of a version in ``.versions/<path>/``: ``v0003 2026-11-29 101500.txt``."""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.gmtime(timestamp))
    ext = posixpath.splitext(posixpath.basename(rel))[1]
    return f"v{number:04d} {stamp}{ext}"


class Versioning(Layer):
    """Keep earlier contents of every file: history, revert, compare, pins, restore.

    ``Versioning(fs=target, max_versions=30, keep_days=None, versions_dir=".versions",
    show_versions_dir=False, user=None, lock_dir=None)``:

    * ``max_versions``: unpinned versions kept per file (oldest pruned first, at the write);
    * ``keep_days``: also prune unpinned versions replaced more than this many days ago;
    * ``versions_dir``: name of the read-only virtual directory at the stack root;
    * ``show_versions_dir``: list it in the root (it is always reachable by its path);
    * ``user``: recorded for writes that name no user (``context(user=...)`` or ``user=``);
    * ``lock_dir``: local directory for the per-file write locks (default: user cache dir).

    A write describes itself with keyword arguments (``fs.pipe_file(p, data,
    description="fixed typo", user="ann", autosave=False)``, same for ``open``/``put_file``)
    or for a block of calls with :meth:`context`.
    """

    protocol = "aiofs-versioning"
    adds_capabilities = frozenset({VERSIONS})

    def __init__(
        self,
        fs=None,
        target_protocol=None,
        target_options=None,
        max_versions: int = 30,
        keep_days: float | None = None,
        versions_dir: str = ".versions",
        show_versions_dir: bool = False,
        user: str | None = None,
        lock_dir: str | None = None,
        **options,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options,
                         **options)
        if isinstance(max_versions, bool) or not isinstance(max_versions, int) or max_versions < 1:
            raise InvalidArgument(f"max_versions must be an integer >= 1, got {max_versions!r}")
        if keep_days is not None:
            if isinstance(keep_days, bool) or not isinstance(keep_days, (int, float)) or keep_days <= 0:
                raise InvalidArgument(f"keep_days must be a number > 0 (or None), got {keep_days!r}")
        if (not isinstance(versions_dir, str) or not versions_dir or "/" in versions_dir
                or "\\" in versions_dir or versions_dir in (".", "..", INTERNAL_DIR)):
            raise InvalidArgument(f"versions_dir must be one plain name, got {versions_dir!r}")
        if user is not None and not isinstance(user, str):
            raise InvalidArgument("user must be a string")
        self.max_versions = max_versions
        self.keep_days = None if keep_days is None else float(keep_days)
        self.versions_dir = versions_dir
        self.show_versions_dir = bool(show_versions_dir)
        self.user = user
        if lock_dir is None:
            lock_dir = os.path.join(platformdirs.user_cache_dir("aiofs"), "versioning-locks")
        self.lock_dir = os.fspath(lock_dir)
        self.locks = StripeLocks(self.lock_dir, target_identity(self.fs))
        # key -> {record name: (stamp, record)}; records are immutable, the stamp guards reuse
        self._records_cache: collections.OrderedDict = collections.OrderedDict()
        # key -> (names in the history directory, path, versions() result built from them)
        self._public_cache: dict[str, tuple] = {}
        self._cache_lock = threading.Lock()

    def __reduce__(self):
        return _rebuild, (self.fs, dict(
            max_versions=self.max_versions, keep_days=self.keep_days,
            versions_dir=self.versions_dir, show_versions_dir=self.show_versions_dir,
            user=self.user, lock_dir=self.lock_dir, **self.options))

    def unlisted_names(self) -> frozenset[str]:
        """The ``.versions`` directory opens by path even where root listings leave it out."""
        below = super().unlisted_names()
        return below if self.show_versions_dir else below | {self.versions_dir}

    # -- write context ------------------------------------------------------------------------

    @contextlib.contextmanager
    def context(self, user: str | None = None, description: str | None = None,
                autosave: bool | None = None):
        """Describe every write made inside the block (this thread or task only)::

            with v.context(user="ann", description="auto-save", autosave=True):
                fs.pipe_file("canvas.json", data)
        """
        current = dict(_write_context.get())
        for name, value in (("user", user), ("description", description), ("autosave", autosave)):
            if value is not None:
                current[name] = value
        token = _write_context.set(current)
        try:
            yield self
        finally:
            _write_context.reset(token)

    def _write_meta(self, kwargs: dict) -> dict:
        """The user/description/autosave of a write (kwargs over context over defaults)."""
        meta = {"user": self.user, "description": None, "autosave": False}
        meta.update(_write_context.get())
        for name in META_KWARGS:
            if name in kwargs:
                value = kwargs.pop(name)
                if value is not None:
                    meta[name] = value
        if meta["user"] is not None and not isinstance(meta["user"], str):
            raise InvalidArgument("user must be a string")
        if meta["description"] is not None and not isinstance(meta["description"], str):
            raise InvalidArgument("description must be a string")
        meta["autosave"] = bool(meta["autosave"])
        return meta

    # -- paths ----------------------------------------------------------------------------------

    def _rel(self, path) -> str:
        return self._strip_protocol(path).strip("/")

    def _name(self, rel: str) -> str:
        """A root-relative path spelled the way this stack names paths."""
        if not rel:
            return self.root_marker
        return (self.root_marker if self.root_marker == "/" else "") + rel

    @staticmethod
    def _hdir(key: str) -> str:
        return f"{ROOT}/files/{key[:2]}/{key}"

    def _virtual(self, path) -> str | None:
        """The part of ``path`` below the versions directory, or ``None`` if outside it."""
        if not isinstance(path, str):
            path = fsspec.utils.stringify_path(path)
        if self.versions_dir not in path:  # fast path: almost every call
            return None
        rel = self._rel(path)
        if rel == self.versions_dir:
            return ""
        if rel.startswith(self.versions_dir + "/"):
            return rel[len(self.versions_dir) + 1:]
        return None

    def _refuse_virtual_write(self, path) -> None:
        if isinstance(path, str) and self._virtual(path) is not None:
            raise ReadOnly(f"'{self.versions_dir}' holds old versions and is read-only", str(path))

    # -- history store -------------------------------------------------------------------------

    def _listing(self, key: str) -> set[str]:
        """Names in one file's history directory (empty if it has none).

        Names only (no ``stat`` of each object, no logical sizes from the layers below):
        records are immutable and a record name is never reused (see :meth:`_claim`), so the
        set of names alone says whether what is cached still holds.
        """
        with internal_access():
            try:
                names = self.fs.ls(self._hdir(key), detail=False)
            except (FileNotFoundError, NotADirectoryError):
                return set()
        return {posixpath.basename(n.rstrip("/")) for n in names}

    def _records(self, key: str, listing: set[str]) -> dict[int, dict]:
        """``number -> stored record`` for the records named in ``listing`` (cached)."""
        with self._cache_lock:
            cached = self._records_cache.get(key)
            if cached is not None:
                self._records_cache.move_to_end(key)
            cached = dict(cached or {})
        out: dict[int, dict] = {}
        missing: list[str] = []
        for name in listing:
            match = _RECORD_RE.match(name)
            if not match:
                continue
            hit = cached.get(name)
            if hit is not None:
                out[int(match.group(1))] = hit
            else:
                missing.append(name)
        fresh = {}
        if missing:
            hdir = self._hdir(key)
            with internal_access():
                blobs = self.fs.cat([f"{hdir}/{n}" for n in missing], on_error="return")
            by_name = {posixpath.basename(k.rstrip("/")): v for k, v in blobs.items()}
            for name in missing:
                blob = by_name.get(name)
                if not isinstance(blob, bytes):
                    continue  # removed meanwhile (pruned by another writer)
                try:
                    record = json.loads(blob)
                    if record.get("format") != RECORD_FORMAT:
                        continue
                    number = int(record["version_number"])
                except (ValueError, KeyError, TypeError):
                    continue  # not a record of ours: never breaks the timeline
                out[number] = fresh[name] = record
        with self._cache_lock:
            kept = {n: v for n, v in cached.items() if n in listing}
            kept.update(fresh)
            self._records_cache[key] = kept
            self._records_cache.move_to_end(key)
            while len(self._records_cache) > RECORD_CACHE_FILES:
                self._records_cache.popitem(last=False)
        return out

    @staticmethod
    def _pins(listing: set[str]) -> set[int]:
        return {int(m.group(1)) for n in listing if (m := _PIN_RE.match(n))}

    @staticmethod
    def _numbers(listing: set[str]) -> list[int]:
        return [int(m.group(1)) for n in listing if (m := _RECORD_RE.match(n))]

    @staticmethod
    def _claimed(listing: set[str]) -> list[int]:
        """Every number ever claimed that is still visible: records and void markers."""
        return [int(m.group(1)) for n in listing if (m := _CLAIMED_RE.match(n))]

    def _public(self, rel: str, record: dict, pinned: bool) -> dict:
        timestamp = record.get("timestamp")
        return {
            "version_id": record["version_id"],
            "version_number": record["version_number"],
            "timestamp": _iso(timestamp),
            "time": timestamp,
            "replaced_at": _iso(record.get("replaced_at")),
            "size": record.get("size"),
            "user": record.get("user"),
            "description": record.get("description"),
            "hash": record.get("hash"),
            "pinned": pinned,
            "change": record.get("change"),
            "changed_by": record.get("changed_by"),
            "autosave": bool(record.get("autosave")),
            "source": record.get("source", "write"),
            "path": self._name(rel),
            "name": version_file_name(rel, record["version_number"], timestamp or 0.0),
        }

    def _history(self, rel: str) -> tuple[str, set[str], dict[int, dict], set[int]]:
        key = path_key(rel)
        listing = self._listing(key)
        return key, listing, self._records(key, listing), self._pins(listing)

    def _live(self, rel: str) -> dict | None:
        """The target's entry of the live file at ``rel`` (``None`` if absent)."""
        try:
            entry = self.fs.info(self._name(rel))
        except FileNotFoundError:
            return None
        return entry

    def _hash_of(self, data_path: str) -> str:
        hasher = blake3.blake3()
        with internal_access():
            with self.fs.open(data_path, "rb", block_size=HASH_BLOCK) as f:
                while block := f.read(HASH_BLOCK):
                    hasher.update(block)
        return hasher.hexdigest()

    def _head(self, key: str, listing: dict, entry: dict) -> dict | None:
        """The recorded metadata of the live content, if it still describes it."""
        if "head.json" not in listing:
            return None
        try:
            with internal_access():
                head = json.loads(self.fs.cat_file(f"{self._hdir(key)}/head.json"))
        except (FileNotFoundError, ValueError):
            return None
        stamp = stamp_of(entry)
        if head.get("format") != HEAD_FORMAT or stamp is None or head.get("stamp") != stamp:
            return None  # written by a write this layer did not see: no claims about it
        return head

    def _snapshot(self, rel: str, entry: dict, change: str, meta: dict,
                  move: bool = False) -> dict:
        """Keep the live content of ``rel`` as a new version (caller holds the lock)."""
        key = path_key(rel)
        hdir = self._hdir(key)
        listing = self._listing(key)
        token = secrets.token_hex(8)
        data_name = f"data/{int(_now() * 1e6):x}-{token}{_extension(rel)}"
        source, data_path = self._name(rel), f"{hdir}/{data_name}"
        with internal_access():
            if move:
                self.fs.mv(source, data_path)
            else:
                self.fs.cp_file(source, data_path)
        try:
            head = self._head(key, listing, entry) or {}
            digest = entry.get("blake3") or self._hash_of(data_path)
            written = head.get("written_at") or _entry_time(entry) or _now()
            record = {
                "format": RECORD_FORMAT, "version": FORMAT_VERSION,
                "path": rel, "version_number": 0, "version_id": "",
                "timestamp": written, "replaced_at": _now(),
                "size": entry.get("size"), "hash": digest, "hash_algorithm": "blake3",
                "user": head.get("user"), "description": head.get("description"),
                "autosave": bool(head.get("autosave")), "source": head.get("source", "write"),
                "change": change, "changed_by": meta.get("user"), "data": data_name,
            }
            record = self._claim(key, record, listing, token)
        except BaseException:
            with internal_access():
                try:
                    if move:
                        self.fs.mv(data_path, source)
                    else:
                        self.fs.rm_file(data_path)
                except OSError:
                    pass  # the data stays as an unreferenced copy: never a loss
            raise
        return record

    def _claim(self, key: str, record: dict, listing: dict, token: str) -> dict:
        """Create the record under the next free number (exclusive create, retry on clash)."""
        # Numbers are never reused: the newest record is never pruned and a record dropped
        # after a failed commit leaves a ``.void`` marker, so a record's name always means
        # the same immutable record (what lets readers cache records by name alone).
        number = max(self._claimed(listing), default=0) + 1
        hdir = self._hdir(key)
        while True:
            record = {**record, "version_number": number, "version_id": f"v{number}-{token[:8]}"}
            try:
                with internal_access():
                    self.fs.pipe_file(f"{hdir}/v{number:08d}.json", _encode(record), mode="create")
                return record
            except FileExistsError:
                number += 1  # another writer (another machine) took it

    def _drop_version(self, key: str, record: dict, void: bool = False) -> None:
        """Remove one version: record first, then its data and pin (best effort for both).

        ``void``: the version is taken back (its commit failed) and may be the newest, so a
        ``.void`` marker keeps its number from being claimed again.
        """
        hdir = self._hdir(key)
        number = record["version_number"]
        self._forget(key)
        with internal_access():
            if void:
                self.fs.pipe_file(f"{hdir}/v{number:08d}.void", b"")
            for path in (f"{hdir}/v{number:08d}.json", f"{hdir}/{record['data']}",
                         f"{hdir}/v{number:08d}.pin"):
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass

    def _write_head(self, rel: str, meta: dict, source: str = "write",
                    extra: dict | None = None) -> None:
        """Record who wrote the live content and why, bound to its stamp."""
        if not (meta.get("user") or meta.get("description") or meta.get("autosave")
                or source != "write"):
            return  # nothing to say: an older head no longer matches the new stamp anyway
        entry = self._live(rel)
        stamp = stamp_of(entry) if entry else None
        if stamp is None:
            return
        head = {"format": HEAD_FORMAT, "version": FORMAT_VERSION, "stamp": stamp,
                "user": meta.get("user"), "description": meta.get("description"),
                "autosave": bool(meta.get("autosave")), "source": source,
                "written_at": _now(), **(extra or {})}
        with internal_access():
            self.fs.pipe_file(f"{self._hdir(path_key(rel))}/head.json", _encode(head))

    def _prune(self, rel: str, now: float | None = None) -> int:
        """Apply the retention rules to one file's history; bytes of versions removed."""
        key = path_key(rel)
        listing = self._listing(key)
        pins = self._pins(listing)
        if self.keep_days is None and \
                sum(1 for n in self._numbers(listing) if n not in pins) <= self.max_versions:
            return 0  # within the rules: no record needs reading
        records = self._records(key, listing)
        drop = self._beyond_rules(records, pins, now)
        for record in drop:
            self._drop_version(key, record)
        if drop:
            self._forget(key)
        return sum(int(r.get("size") or 0) for r in drop)

    def _beyond_rules(self, records: dict[int, dict], pins: set[int],
                      now: float | None = None) -> list[dict]:
        unpinned = [records[n] for n in sorted(records, reverse=True) if n not in pins]
        drop = unpinned[self.max_versions:]
        if self.keep_days is not None:
            # the newest record is kept whatever its age: it holds the numbering (never reused)
            newest = max(records, default=None)
            cutoff = (_now() if now is None else now) - self.keep_days * DAY
            drop += [r for r in unpinned[: self.max_versions]
                     if float(r.get("replaced_at") or 0) < cutoff and r["version_number"] != newest]
        return drop

    def _forget(self, key: str) -> None:
        with self._cache_lock:
            self._records_cache.pop(key, None)
            self._public_cache.pop(key, None)

    def _mark_deleted(self, rel: str, record: dict) -> None:
        marker = {"format": DELETED_FORMAT, "version": FORMAT_VERSION, "path": rel,
                  "version_number": record["version_number"], "version_id": record["version_id"],
                  "deleted_at": record["replaced_at"], "size": record.get("size"),
                  "user": record.get("changed_by")}
        with internal_access():
            self.fs.pipe_file(f"{ROOT}/deleted/{path_key(rel)}.json", _encode(marker))

    @contextlib.contextmanager
    def _locked(self, rels):
        with self.locks.hold([path_key(r) for r in rels]):
            yield

    # -- public API ----------------------------------------------------------------------------

    def versions(self, path) -> list[dict]:
        """Earlier versions of ``path``, newest first (dicts; see the module doc).

        ``FileNotFoundError`` if the path neither exists nor has any history.
        """
        rel = self._user_rel(path)
        key = path_key(rel)
        listing = frozenset(self._listing(key))
        with self._cache_lock:
            hit = self._public_cache.get(key)
        if hit is not None and hit[0] == listing and hit[1] == rel:
            return [dict(v) for v in hit[2]]
        records, pins = self._records(key, listing), self._pins(listing)
        if not records:
            entry = self._live(rel)
            if entry is None:
                raise NotFound(f"no such file and no versions of it: {rel!r}", rel)
            if entry.get("type") == "directory":
                raise IsADirectory(f"a directory has no versions (its files do): {rel!r}", rel)
        result = [self._public(rel, records[n], n in pins) for n in sorted(records, reverse=True)]
        with self._cache_lock:
            self._public_cache[key] = (listing, rel, result)
            while len(self._public_cache) > RECORD_CACHE_FILES:
                self._public_cache.pop(next(iter(self._public_cache)))
        return [dict(v) for v in result]

    def _user_rel(self, path) -> str:
        path = self._strip_protocol(path)
        hide_internal_path(path)
        if self._virtual(path) is not None:
            raise InvalidArgument(f"name the file itself, not a path in '{self.versions_dir}'", path)
        rel = path.strip("/")
        if not rel:
            raise IsADirectory("the store root has no versions", path)
        return rel

    def _resolve(self, rel: str, version) -> tuple[str, dict, set[int]]:
        """``(key, record, pins)`` of ``version`` (id, number, ``"v3"`` or a .versions name)."""
        key, _, records, pins = self._history(rel)
        number = None
        if isinstance(version, int) and not isinstance(version, bool):
            number = version
        elif isinstance(version, str):
            for n, record in records.items():
                if record.get("version_id") == version:
                    return key, record, pins
            text = version.strip()
            match = re.fullmatch(r"v?(\d+)", text) or _VNAME_RE.match(text)
            if match:
                number = int(match.group(1))
        if number is not None and number in records:
            return key, records[number], pins
        raise VersionNotFound(f"no version {version!r} of {rel!r}", rel)

    def get_version(self, path, version_id) -> dict:
        """The record (as in :meth:`versions`) of one version."""
        rel = self._user_rel(path)
        _, record, pins = self._resolve_or_missing(rel, version_id)
        return self._public(rel, record, record["version_number"] in pins)

    def version_path(self, path, version_id) -> str:
        """The path of one version in the ``.versions/`` directory.

        Copying it over its own file from the top of a stack (``fs.cp_file(version_path,
        path)``) is a revert (or, for a deleted file, a restore) that every layer above sees,
        e.g. a Quota layer counts the restored bytes: the command line does it this way.
        """
        record = self.get_version(path, version_id)
        return self._name(f"{self.versions_dir}/{self._rel(path)}/{record['name']}")

    def read_version(self, path, version_id, start: int | None = None,
                     end: int | None = None) -> bytes:
        """The bytes of one version (``start``/``end`` read a range only)."""
        rel = self._user_rel(path)
        key, record, _ = self._resolve(rel, version_id)
        return self._read_data(key, record, start, end)

    def open_version(self, path, version_id) -> AbstractBufferedFile:
        """One version opened for reading (seekable; reads only what is asked for)."""
        rel = self._user_rel(path)
        key, record, _ = self._resolve(rel, version_id)
        return VersionReadFile(self, self._name(f"{self.versions_dir}/{rel}"), key, record)

    def _read_data(self, key: str, record: dict, start=None, end=None) -> bytes:
        with internal_access():
            try:
                return self.fs.cat_file(f"{self._hdir(key)}/{record['data']}", start=start, end=end)
            except FileNotFoundError:
                raise VersionNotFound(f"version {record['version_id']} was removed",
                                      record.get("path")) from None

    def revert(self, path, version_id, user: str | None = None,
               description: str | None = None) -> dict:
        """Make an old version the current content; the current content becomes a version.

        Returns the record of the version that now holds the replaced content (``None`` if
        the file was deleted). ``FileNotFoundError`` if the path never existed.
        """
        rel = self._user_rel(path)
        meta = self._write_meta({"user": user, "description": description})
        with self._locked([rel]):
            key, record, _ = self._resolve_or_missing(rel, version_id)
            entry = self._live(rel)
            if entry is not None and entry.get("type") == "directory":
                raise IsADirectory(f"is a directory: {rel!r}", rel)
            kept = None
            if entry is not None:
                kept = self._snapshot(rel, entry, "revert", meta)
            with internal_access():
                self.fs.cp_file(f"{self._hdir(key)}/{record['data']}", self._name(rel))
            if meta.get("description") is None:
                meta["description"] = f"reverted to version {record['version_number']}"
            self._write_head(rel, meta, source="revert",
                             extra={"from_version": record["version_number"]})
            self._prune(rel)
        return None if kept is None else self._public(rel, kept, False)

    def _resolve_or_missing(self, rel: str, version_id):
        try:
            return self._resolve(rel, version_id)
        except VersionNotFound:
            if not self._listing(path_key(rel)) and self._live(rel) is None:
                raise NotFound(f"no such file and no versions of it: {rel!r}", rel) from None
            raise

    def pin(self, path, version_id) -> dict:
        """Keep a version beyond ``max_versions`` and ``keep_days`` (until :meth:`unpin`)."""
        rel = self._user_rel(path)
        with self._locked([rel]):
            key, record, _ = self._resolve_or_missing(rel, version_id)
            marker = {"format": "aiofs-version-pin", "version": FORMAT_VERSION,
                      "pinned_at": _now(), "user": self._write_meta({}).get("user")}
            with internal_access():
                self.fs.pipe_file(f"{self._hdir(key)}/v{record['version_number']:08d}.pin",
                                  _encode(marker))
        return self._public(rel, record, True)

    def unpin(self, path, version_id) -> dict:
        """Let a pinned version fall under the rules again (applied at the next write)."""
        rel = self._user_rel(path)
        with self._locked([rel]):
            key, record, _ = self._resolve_or_missing(rel, version_id)
            with internal_access():
                try:
                    self.fs.rm_file(f"{self._hdir(key)}/v{record['version_number']:08d}.pin")
                except FileNotFoundError:
                    pass
        return self._public(rel, record, False)

    def deleted(self, path: str = "") -> list[dict]:
        """Deleted files that can be restored (below ``path``), most recently deleted first."""
        base = self._strip_protocol(path).strip("/") if path else ""
        with internal_access():
            try:
                names = self.fs.ls(f"{ROOT}/deleted", detail=False)
            except FileNotFoundError:
                return []
            blobs = self.fs.cat(names, on_error="return") if names else {}
        out = []
        for blob in blobs.values():
            if not isinstance(blob, bytes):
                continue
            try:
                marker = json.loads(blob)
                rel = marker["path"]
            except (ValueError, KeyError, TypeError):
                continue
            if base and not (rel == base or rel.startswith(base + "/")):
                continue
            if self._live(rel) is not None:
                continue  # written again since: nothing to restore
            out.append({"path": self._name(rel), "deleted_at": _iso(marker.get("deleted_at")),
                        "time": marker.get("deleted_at"), "size": marker.get("size"),
                        "version_id": marker.get("version_id"),
                        "version_number": marker.get("version_number"),
                        "user": marker.get("user")})
        out.sort(key=lambda d: d["time"] or 0, reverse=True)
        return out

    def restore(self, path, version_id=None, user: str | None = None,
                description: str | None = None) -> dict:
        """Bring back a deleted file (its last version, or ``version_id``).

        ``ALREADY_EXISTS`` if the file exists (use :meth:`revert`); ``FileNotFoundError`` if
        it has no history. Returns the record of the restored version.
        """
        rel = self._user_rel(path)
        meta = self._write_meta({"user": user, "description": description})
        with self._locked([rel]):
            if self._live(rel) is not None:
                raise AlreadyExists(f"{rel!r} exists: revert it to a version instead", rel)
            key, _, records, pins = self._history(rel)
            if not records:
                raise NotFound(f"no versions of {rel!r} to restore", rel)
            if version_id is None:
                record = records[max(records)]
            else:
                _, record, _ = self._resolve(rel, version_id)
            with internal_access():
                self.fs.cp_file(f"{self._hdir(key)}/{record['data']}", self._name(rel))
            meta["description"] = meta.get("description") or \
                f"restored version {record['version_number']}"
            self._write_head(rel, meta, source="restore",
                             extra={"from_version": record["version_number"]})
            with internal_access():
                try:
                    self.fs.rm_file(f"{ROOT}/deleted/{key}.json")
                except FileNotFoundError:
                    pass
        return self._public(rel, record, record["version_number"] in pins)

    def compare(self, path, a, b="current", diff_image: bool = False,
                max_text_bytes: int = 1 << 20) -> dict:
        """Differences between two versions (``"current"`` names the live content).

        ``{"path", "a", "b", "differences": {"size_change_bytes", "time_between_seconds",
        "hash_changed", "users", "same_user", ...}, "content": {"type", ...}}``; the content
        diff depends on the type (text/code, JSON, image, binary): see :mod:`.compare`.
        """
        from aiofs.layers.versioning.compare import compare_contents, metadata_differences

        rel = self._user_rel(path)
        left, left_data = self._side(rel, a)
        right, right_data = self._side(rel, b)
        return {
            "path": self._name(rel), "a": left, "b": right,
            "differences": metadata_differences(left, right),
            "content": compare_contents(rel, left_data, right_data, diff_image=diff_image,
                                        max_text_bytes=max_text_bytes),
        }

    def _side(self, rel: str, version) -> tuple[dict, bytes]:
        if version is None or version == "current":
            entry = self._live(rel)
            if entry is None:
                raise NotFound(f"{rel!r} does not exist (compare two versions instead)", rel)
            data = self.fs.cat_file(self._name(rel))
            key = path_key(rel)
            listing = self._listing(key)
            head = self._head(key, listing, entry) or {}
            when = head.get("written_at") or _entry_time(entry)
            return {"version_id": "current", "version_number": None, "timestamp": _iso(when),
                    "time": when, "size": len(data), "user": head.get("user"),
                    "description": head.get("description"),
                    "hash": entry.get("blake3") or blake3.blake3(data).hexdigest(),
                    "pinned": False}, data
        key, record, pins = self._resolve(rel, version)
        return (self._public(rel, record, record["version_number"] in pins),
                self._read_data(key, record))

    def stats(self) -> dict:
        """Counts for the storage overview, from one listing of the history store.

        ``version_bytes`` is what the versions hold (logical); with Dedup below they store
        far less (the chunks they share with other versions and files are stored once).
        """
        with internal_access():
            try:
                found = self.fs.find(ROOT, detail=True)
            except FileNotFoundError:
                found = {}
        keys, versions, pinned, data_bytes, deleted = set(), 0, 0, 0, 0
        for name, entry in found.items():
            parts = name.strip("/").split("/")
            base = parts[-1]
            if len(parts) >= 6 and parts[2] == "files":
                if _RECORD_RE.match(base):
                    versions += 1
                    keys.add(parts[4])
                elif _PIN_RE.match(base):
                    pinned += 1
                elif parts[-2] == "data":
                    data_bytes += int(entry.get("size") or 0)
            elif len(parts) == 4 and parts[2] == "deleted":
                deleted += 1
        return {"files_with_versions": len(keys), "versions": versions, "pinned": pinned,
                "version_bytes": data_bytes, "deleted_markers": deleted,
                "max_versions": self.max_versions, "keep_days": self.keep_days}

    # -- cleanup hooks (aiofs.optimize.cleanup) ------------------------------------------------

    def cleanup_candidates(self, now: float | None = None) -> list[dict]:
        """Versions beyond the rules (after ``max_versions``/``keep_days`` changed or an
        unpin), and leftovers of interrupted writes older than an hour (a version's data
        that no record names, a staging object).

        Scans every history (cleanup is an explicit, rare operation).
        """
        now = _now() if now is None else now
        out = []
        with internal_access():
            try:
                dirs = self.fs.find(f"{ROOT}/files", maxdepth=2, withdirs=True, detail=True)
            except FileNotFoundError:
                dirs = {}
        keys = sorted({posixpath.basename(n.rstrip("/")) for n, e in dirs.items()
                       if e.get("type") == "directory" and re.fullmatch(r"[0-9a-f]{32}",
                                                                        posixpath.basename(n.rstrip("/")))})
        for key in keys:
            listing = self._listing(key)
            records = self._records(key, listing)
            for record in self._beyond_rules(records, self._pins(listing), now):
                out.append({"path": self._name(record["path"]), "size": int(record.get("size") or 0),
                            "reason": self._reason(record, now), "kind": "version",
                            "version_id": record["version_id"],
                            "version_number": record["version_number"],
                            "mtime": record.get("timestamp")})
            if "data" in listing:
                out += self._leftovers(f"{self._hdir(key)}/data", now, key=key, records=records)
        out += self._leftovers(f"{ROOT}/staging", now)
        return out

    def _leftovers(self, directory: str, now: float, key: str | None = None,
                   records: dict | None = None) -> list[dict]:
        """Objects in ``directory`` older than :data:`LEFTOVER_AGE` that no record names."""
        with internal_access():
            try:
                entries = self.fs.ls(directory, detail=True)
            except FileNotFoundError:
                return []
        named = {r.get("data") for r in (records or {}).values()}
        out = []
        for entry in entries:
            name = entry["name"].rstrip("/")
            rel_name = f"data/{posixpath.basename(name)}"
            when = _entry_time(entry)
            if entry.get("type") != "file" or rel_name in named or when is None \
                    or now - when < LEFTOVER_AGE:
                continue
            out.append({"path": self._name(name.strip("/")), "size": int(entry.get("size") or 0),
                        "kind": "version", "object": name, "key": key, "mtime": when,
                        "reason": "left by an interrupted write (no version refers to it)"})
        return out

    def _reason(self, record: dict, now: float | None) -> str:
        age = ((_now() if now is None else now) - float(record.get("replaced_at") or 0)) / DAY
        rules = f"max_versions={self.max_versions}" + (
            f", keep_days={self.keep_days:g}" if self.keep_days is not None else "")
        return f"version {record['version_number']} (replaced {age:.0f} days ago) is beyond {rules}"

    def apply_cleanup(self, candidates: list[dict]) -> dict:
        """Remove the versions of :meth:`cleanup_candidates` still beyond the rules."""
        freed, removed = 0, 0
        by_path: dict[str, set] = {}
        for c in candidates:
            if c.get("object"):
                freed_here = self._remove_leftover(c)
                freed += freed_here
                removed += bool(freed_here)
                continue
            by_path.setdefault(self._rel(c["path"]), set()).add(c.get("version_id"))
        for rel, ids in by_path.items():
            with self._locked([rel]):
                key, listing, records, pins = self._history(rel)
                for record in self._beyond_rules(records, pins):
                    if record["version_id"] in ids:  # re-checked now: a pin since is honoured
                        self._drop_version(key, record)
                        freed += int(record.get("size") or 0)
                        removed += 1
                self._forget(key)
        return {"bytes_freed": freed, "versions_removed": removed}

    def _remove_leftover(self, candidate: dict) -> int:
        """Remove one leftover object if still unreferenced; its size, or 0 if kept."""
        name, key = candidate["object"], candidate.get("key")
        with contextlib.ExitStack() as stack:
            if key:
                stack.enter_context(self.locks.hold([key]))
                listing = self._listing(key)
                if f"data/{posixpath.basename(name)}" in {
                        r.get("data") for r in self._records(key, listing).values()}:
                    return 0  # a record names it now
            with internal_access():
                try:
                    self.fs.rm_file(name)
                except FileNotFoundError:
                    return 0
        return int(candidate.get("size") or 0)

    # -- versioned writes ----------------------------------------------------------------------

    def _versioned_replace(self, rel: str, change: str, meta: dict, commit, move: bool = False):
        """Snapshot the live file (if any), run ``commit()``, record metadata, prune."""
        with self._locked([rel]):
            entry = self._live(rel)
            kept = None
            if entry is not None and entry.get("type") == "file":
                kept = self._snapshot(rel, entry, change, meta, move=move)
            try:
                result = commit()
            except BaseException:
                if kept is not None:
                    if move:
                        raise  # the content stays safe as a version; nothing to undo here
                    self._drop_version(path_key(rel), kept, void=True)
                raise
            if change == "delete":
                if kept is not None:
                    self._mark_deleted(rel, kept)
            else:
                self._write_head(rel, meta)
            if kept is not None:
                self._prune(rel)
            return result

    def _change_for(self, meta: dict) -> str:
        return "autosave" if meta.get("autosave") else "overwrite"

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        sub = self._virtual(path)
        if "r" in mode:
            for name in META_KWARGS:
                kwargs.pop(name, None)
            if sub is not None:
                return self._open_virtual(path, sub, block_size)
            return super()._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                                 cache_options=cache_options, **kwargs)
        self._refuse_virtual_write(path)
        refuse_internal_write(path)
        meta = self._write_meta(kwargs)
        if is_internal(path) or ATOMIC_WRITES in capabilities_of(self.fs):
            inner = self.fs._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                                  cache_options=cache_options, **kwargs)
            if is_internal(path):
                return inner
            return VersionedWriteFile(self, self._rel(path), inner, meta, mode)
        # A target whose open('wb') replaces the file at once (fsspec's memory filesystem)
        # would destroy the old content before the snapshot: write a staging object and
        # move it into place at close instead.
        rel = self._rel(path)
        if "x" in mode and self._live(rel) is not None:
            raise AlreadyExists(f"file exists: {rel!r}", rel)
        staging = f"{ROOT}/staging/{secrets.token_hex(12)}"
        with internal_access():
            if "a" in mode and self._live(rel) is not None:
                self.fs.cp_file(self._name(rel), staging)
            inner = self.fs._open(staging, mode=mode.replace("x", "w"), block_size=block_size,
                                  autocommit=autocommit, cache_options=cache_options, **kwargs)
        return VersionedWriteFile(self, rel, inner, meta, mode, staging=staging)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._refuse_virtual_write(path)
        refuse_internal_write(path)
        meta = self._write_meta(kwargs)
        if is_internal(path):
            return self.fs.pipe_file(path, value, mode=mode, **kwargs)
        rel = self._rel(path)
        if mode == "create" and self._live(rel) is not None:
            raise AlreadyExists(f"file exists: {rel!r}", rel)  # before any snapshot is taken
        return self._versioned_replace(
            rel, self._change_for(meta), meta,
            lambda: self.fs.pipe_file(path, value, mode=mode, **kwargs))

    def pipe(self, path, value=None, **kwargs):
        if isinstance(path, str):
            path = {path: value}
        prefix = f"{self.protocol}://"
        path = {type(self)._strip_protocol(k) if isinstance(k, str) and k.startswith(prefix) else k: v
                for k, v in path.items()}
        for p in path:
            self._refuse_virtual_write(p)
            refuse_internal_write(p)
        meta = self._write_meta(kwargs)
        if len(path) == 1:
            (p, v), = path.items()
            return self.pipe_file(p, v, **kwargs)
        rels = {p: self._rel(p) for p in path if not is_internal(p)}
        if not rels:
            return self.fs.pipe(path, **kwargs)
        change = self._change_for(meta)
        with self._locked(rels.values()):
            kept = []
            try:
                for p, rel in rels.items():
                    entry = self._live(rel)
                    if entry is not None and entry.get("type") == "file":
                        kept.append((rel, self._snapshot(rel, entry, change, meta)))
                self.fs.pipe(path, **kwargs)  # still one bulk call down
            except BaseException:
                for rel, record in kept:
                    self._drop_version(path_key(rel), record, void=True)
                raise
            for rel in rels.values():
                self._write_head(rel, meta)
            for rel, _ in kept:
                self._prune(rel)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        self._refuse_virtual_write(rpath)
        refuse_internal_write(rpath)
        if is_internal(rpath):
            return self.fs.put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return None
        # streamed through a versioned writer: the lock is held only while it commits
        with open(lpath, "rb") as src:
            callback.set_size(os.fstat(src.fileno()).st_size)
            with self.open(rpath, "xb" if mode == "create" else "wb", **kwargs) as dst:
                while block := src.read(8 << 20):
                    dst.write(block)
                    callback.relative_update(len(block))
        return None

    def touch(self, path, truncate=True, **kwargs):
        self._refuse_virtual_write(path)
        refuse_internal_write(path)
        if truncate and not is_internal(path) and self.exists(path):
            return self.pipe_file(path, b"", **kwargs)
        return self.fs.touch(path, truncate=truncate, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        self._refuse_virtual_write(path2)
        refuse_internal_write(path2)
        meta = self._write_meta(kwargs)
        sub = self._virtual(path1)
        if sub is not None:  # copy an old version out of .versions/
            key, record = self._virtual_version(path1, sub)
            if not is_internal(path2) and self._rel(path2) == record["path"]:
                # over its own file: that is a revert (a restore if the file is gone), so
                # it gets their records whichever layer above passed the copy down
                how = self.restore if self._live(record["path"]) is None else self.revert
                how(record["path"], record["version_number"], user=meta["user"],
                    description=meta["description"])
                return None

            def commit():
                with internal_access():
                    return self.fs.cp_file(f"{self._hdir(key)}/{record['data']}", path2, **kwargs)
        else:
            hide_internal_path(path1)

            def commit():
                return self.fs.cp_file(path1, path2, **kwargs)
        if is_internal(path2):
            return commit()
        target = self._rel(path2)
        if self.isdir(path1) if sub is None else False:
            return commit()
        return self._versioned_replace(target, self._change_for(meta), meta, commit)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        for p in (path1 if isinstance(path1, list) else [path1]):
            self._refuse_virtual_write(p)
            refuse_internal_write(p)
        self._refuse_virtual_write(path2)
        refuse_internal_write(path2)
        if isinstance(path1, list) or has_glob(path1):
            sources = self.expand_path(path1, recursive=False)
            dest = self._rel(path2)
            into = len(sources) > 1 or self.isdir(path2) or str(path2).endswith("/")
            for src in sources:
                self.mv(src, self._name(posixpath.join(dest, posixpath.basename(self._rel(src))))
                        if into else path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return None
        if is_internal(path1) or is_internal(path2):
            return self.fs.mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        src_rel, dst_rel = self._rel(path1), self._rel(path2)
        src_entry = self._live(src_rel)
        if src_entry is None:
            raise NotFound(f"no such file or directory: {src_rel!r}", src_rel)
        dst_entry = self._live(dst_rel)
        effective = dst_rel
        if dst_entry is not None and dst_entry.get("type") == "directory":
            effective = posixpath.join(dst_rel, posixpath.basename(src_rel))
        meta = self._write_meta(kwargs)

        def commit():
            return self.fs.mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

        if src_entry.get("type") != "directory":
            return self._versioned_replace(effective, "rename", meta, commit)
        # a directory: files it would land on (object stores merge trees) are kept first
        if self._live(effective) is None:
            return commit()
        collisions = []
        for name in self.find(self._name(src_rel)):
            inner = self._rel(name)[len(src_rel) + 1:]
            landing = posixpath.join(effective, inner)
            if self._live(landing) is not None:
                collisions.append(landing)
        with self._locked(collisions):
            kept = []
            for landing in collisions:
                entry = self._live(landing)
                if entry is not None and entry.get("type") == "file":
                    kept.append((landing, self._snapshot(landing, entry, "rename", meta)))
            try:
                result = commit()
            except BaseException:
                for landing, record in kept:
                    self._drop_version(path_key(landing), record, void=True)
                raise
            for landing, _ in kept:
                self._prune(landing)
        return result

    def rm_file(self, path):
        self._refuse_virtual_write(path)
        refuse_internal_write(path)
        if is_internal(path):
            return self.fs.rm_file(path)
        rel = self._rel(path)
        entry = self._live(rel)
        if entry is None:
            raise NotFound(f"no such file: {rel!r}", rel)
        if entry.get("type") == "directory":
            return self.fs.rm_file(path)  # the target says what removing a directory means
        return self._delete_file(rel)

    def _delete_file(self, rel: str) -> None:
        meta = self._write_meta({})
        # moving the file into the history is the delete: nothing is copied
        self._versioned_replace(rel, "delete", meta, lambda: None, move=True)

    def rm(self, path, recursive=False, maxdepth=None):
        paths = [self._strip_protocol(p) for p in (path if isinstance(path, list) else [path])]
        for p in paths:
            self._refuse_virtual_write(p)
            refuse_internal_write(p)
        expanded = self.expand_path(paths, recursive=False)
        dirs = []
        for p in expanded:
            if is_internal(p):
                self.fs.rm(p, recursive=recursive, maxdepth=maxdepth)
                continue
            entry = self._live(self._rel(p))
            if entry is None:
                rel = self._rel(p)
                if any(rel.startswith(self._rel(d) + "/") for d in expanded if d != p):
                    continue  # below another path of this call: removed with it
                raise NotFound(f"no such file or directory: {rel!r}", rel)
            if entry.get("type") == "directory":
                dirs.append(p)
            else:
                self._delete_file(self._rel(p))
        for d in dirs:
            if recursive:
                for name in sorted(self.find(d, maxdepth=maxdepth)):
                    if self._live(self._rel(name)) is not None:
                        self._delete_file(self._rel(name))
            # what is left (directories, or a refusal for a non-empty one) is the target's;
            # on an object store the directory vanished with its last file
            if not recursive or self._live(self._rel(d)) is not None:
                super().rm(d, recursive=recursive, maxdepth=maxdepth)

    def mkdir(self, path, create_parents=True, **kwargs):
        self._refuse_virtual_write(path)
        return super().mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path, exist_ok=False):
        self._refuse_virtual_write(path)
        return super().makedirs(path, exist_ok=exist_ok)

    def rmdir(self, path):
        self._refuse_virtual_write(path)
        return super().rmdir(path)

    # -- reads, listings and the virtual directory ---------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        sub = self._virtual(path)
        if sub is not None:
            entries = self._ls_virtual(sub)
            return entries if detail else [e["name"] for e in entries]
        entries = super().ls(path, detail=detail, **kwargs)
        if self.show_versions_dir and not self._rel(path):
            entry = self._dir_entry("")
            entries = list(entries) + [entry if detail else entry["name"]]
        return entries

    def info(self, path, **kwargs):
        sub = self._virtual(path)
        if sub is not None:
            return self._info_virtual(sub)
        return super().info(path, **kwargs)

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        if self._virtual(path) is not None:  # walk the virtual tree with our own ls
            return fsspec.AbstractFileSystem.find(self, path, maxdepth=maxdepth,
                                                  withdirs=withdirs, detail=detail, **kwargs)
        return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)

    def exists(self, path, **kwargs):
        try:
            self.info(path)
            return True
        except (FileNotFoundError, ValueError, NotADirectoryError):
            return False
        except OSError:
            return False

    def cat_file(self, path, start=None, end=None, **kwargs):
        sub = self._virtual(path)
        if sub is not None:
            key, record = self._virtual_version(path, sub)
            return self._read_data(key, record, start, end)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        paths = path if isinstance(path, list) else [path]
        if any(isinstance(p, str) and self._virtual(p) is not None for p in paths):
            if not isinstance(path, list) and not recursive and not has_glob(path):
                return self.cat_file(path, **kwargs)
            out = {}
            for p in self.expand_path(path, recursive=recursive):
                try:
                    out[p] = self.cat_file(p, **kwargs)
                except Exception as exc:
                    if on_error == "raise":
                        raise
                    if on_error != "omit":
                        out[p] = exc
            return out
        return super().cat(path, recursive=recursive, on_error=on_error, **kwargs)

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        sub = self._virtual(rpath)
        if sub is None:
            return super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return None
        data = self.cat_file(rpath)
        callback.set_size(len(data))
        if outfile is not None:
            outfile.write(data)
        else:
            with open(lpath, "wb") as f:
                f.write(data)
        callback.relative_update(len(data))
        return None

    def created(self, path):
        return self._when(path, "created")

    def modified(self, path):
        return self._when(path, "modified")

    def _when(self, path, which: str):
        sub = self._virtual(path)
        if sub is None:
            return getattr(super(), which)(path)
        entry = self._info_virtual(sub)
        return datetime.datetime.fromtimestamp(entry.get("mtime") or 0, tz=datetime.timezone.utc)

    def _dir_entry(self, sub: str) -> dict:
        rel = self.versions_dir + ("/" + sub if sub else "")
        return {"name": self._name(rel), "size": 0, "type": "directory"}

    def _version_entry(self, rel: str, record: dict, pinned: bool) -> dict:
        public = self._public(rel, record, pinned)
        return {"name": self._name(f"{self.versions_dir}/{rel}/{public['name']}"),
                "size": record.get("size") or 0, "type": "file", "mtime": record.get("timestamp"),
                "created": record.get("timestamp"), "version_id": record["version_id"],
                "version_number": record["version_number"], "pinned": pinned,
                "blake3": record.get("hash")}

    def _classify(self, sub: str):
        """What a path below ``.versions/`` names: ("dir", rel), ("file", rel), ("version", rel, n)."""
        if not sub:
            return ("dir", "")
        hide_internal_path(sub)
        parent, name = posixpath.split(sub)
        match = _VNAME_RE.match(name)
        if match and parent:
            entry = self._live(parent)
            if (entry is not None and entry.get("type") != "directory") or \
                    (entry is None and self._numbers(self._listing(path_key(parent)))):
                return ("version", parent, int(match.group(1)))
        entry = self._live(sub)
        if entry is not None:
            return ("dir" if entry.get("type") == "directory" else "file", sub)
        if self._numbers(self._listing(path_key(sub))):
            return ("file", sub)
        raise NotFound(f"no such file or directory: {self.versions_dir}/{sub}", sub)

    def _ls_virtual(self, sub: str) -> list[dict]:
        kind = self._classify(sub)
        if kind[0] == "version":
            return [self._info_virtual(sub)]
        rel = kind[1]
        if kind[0] == "dir":
            children = super().ls(self._name(rel), detail=False)
            return [self._dir_entry(self._rel(c)) for c in children]
        _, listing, records, pins = self._history(rel)
        return [self._version_entry(rel, records[n], n in pins) for n in sorted(records)]

    def _info_virtual(self, sub: str) -> dict:
        kind = self._classify(sub)
        if kind[0] != "version":
            return self._dir_entry(kind[1])
        _, rel, number = kind
        _, _, records, pins = self._history(rel)
        if number not in records:
            raise NotFound(f"no version {number} of {rel!r}", sub)
        return self._version_entry(rel, records[number], number in pins)

    def _virtual_version(self, path, sub: str) -> tuple[str, dict]:
        kind = self._classify(sub)
        if kind[0] != "version":
            raise IsADirectory(f"is a directory: {path}", str(path))
        _, rel, number = kind
        key, _, records, _ = self._history(rel)
        if number not in records:
            raise NotFound(f"no version {number} of {rel!r}", sub)
        return key, records[number]

    def _open_virtual(self, path, sub: str, block_size=None):
        key, record = self._virtual_version(path, sub)
        return VersionReadFile(self, self._strip_protocol(path), key, record, block_size)


def _rebuild(fs, options):
    return Versioning(fs=fs, **options)


# -- files -------------------------------------------------------------------------------------


class VersionedWriteFile(WriteOnlyFile, io.BufferedIOBase):
    """A write through :class:`Versioning`: the target's writer, snapshot taken at commit.

    Bytes go straight to the target's writer. :meth:`close` takes the file's lock, keeps the
    live content as a version, then lets the target writer commit; if the commit fails the
    new version is dropped again. :meth:`discard` (or an exception inside ``with``) leaves
    the file and its history as they were.
    """

    def __init__(self, layer: Versioning, rel: str, inner, meta: dict, mode: str,
                 staging: str | None = None):
        super().__init__()
        self.staging = staging
        self.layer = layer
        self.rel = rel
        self.inner = inner
        self.meta = meta
        self.mode = mode
        self.path = layer._name(rel)
        self._done = False

    def tell(self) -> int:
        return self.inner.tell()

    def write(self, data) -> int:
        if self._done:
            raise ValueError("I/O operation on closed file")
        return self.inner.write(data)

    def flush(self) -> None:
        """Data becomes the file only at close; the target writer decides about buffering."""
        if not self._done:
            flush = getattr(self.inner, "flush", None)
            if callable(flush):
                flush()

    def close(self) -> None:
        """Snapshot the live content, commit the new one, record and prune."""
        if self._done:
            return
        self._done = True
        layer = self.layer
        try:
            if self.staging is None:
                commit = self.inner.close
            else:
                with internal_access():
                    self.inner.close()  # the slow part, outside the file's lock

                def commit():
                    if "x" in self.mode and layer._live(self.rel) is not None:
                        raise AlreadyExists(f"file exists: {self.rel!r}", self.rel)
                    with internal_access():
                        layer.fs.mv(self.staging, layer._name(self.rel))
            layer._versioned_replace(self.rel, layer._change_for(self.meta), self.meta, commit)
        except BaseException:
            self._discard_inner()
            raise
        finally:
            super().close()

    def _discard_inner(self) -> None:
        discard = getattr(self.inner, "discard", None)
        try:
            if callable(discard):
                discard()
        except Exception:
            pass
        if self.staging is not None:
            with internal_access():
                try:
                    self.layer.fs.rm_file(self.staging)
                except OSError:
                    pass  # never written, or already moved into place

    def discard(self) -> None:
        """Abandon the write: the file keeps its old content, the history is unchanged."""
        if self._done:
            return
        self._done = True
        self._discard_inner()
        super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()


class VersionReadFile(AbstractBufferedFile):
    """An old version opened for reading: each block is a ranged read of its data object."""

    DEFAULT_BLOCK_SIZE = 4 << 20

    def __init__(self, layer: Versioning, path: str, key: str, record: dict, block_size=None):
        self.key = key
        self.record = record
        super().__init__(layer, path, mode="rb", block_size=block_size or self.DEFAULT_BLOCK_SIZE,
                         cache_type="readahead", size=int(record.get("size") or 0))

    def _fetch_range(self, start, end):
        return self.fs._read_data(self.key, self.record, start, min(end, self.size))
