"""The storage overview: what a stack holds, by type, folder and age, and what its layers say.

Contract: :func:`overview` returns the JSON the HTTP API serves at ``/overview`` and
``aiofs overview --json`` prints. Cost: **one** ``find(detail=True)`` of the stack, one
listing of the bottom when it is a local or in-memory store (stored bytes, internal data),
one ``stats()`` call per layer that has one, one upsert of the usage history. No file is
read. Shape (every key always present; figures are bytes unless named otherwise)::

    {
      "stack": "default", "path": "/", "description": "Validate(Quota(Compress(Local(...))))",
      "generated_at": "2026-11-25T06:00:00+00:00", "elapsed_seconds": 0.21,
      "google_drive": {                      # filled by a Drive backend (see below)
        "connected": false,
        "quota": {"limit": null, "usage": null, "usage_percentage": null},
        "usage_in_drive": null, "usage_in_drive_trash": null
      },
      "local_storage": {
        "root": "/home/u/.local/share/aiofs/storage",  # null when the bottom is not on disk
        "backend": "Local('/home/u/...')",
        "files": 10000, "folders": 20,
        "logical_bytes": 8000000,            # what readers get (sum of listed sizes)
        "stored_bytes": 3100000,             # the bottom's bytes under the files' names
                                             # (after compression; hard links once; null: unknown)
        "internal_bytes": 45000,             # layers' own data under .aiofs/ (dedup packs,
                                             # indexes; null: unknown)
        "quota": {"limit": 5368709120, "usage": 8000000, "usage_percentage": 0.15},  # or null
        "disk": {"total": ..., "used": ..., "free": ...},                     # or null
        "usage_percentage": 0.15             # quota usage if a quota layer, else disk share
      },
      "usage_by_type":   {"image": {"files": 2, "bytes": 10}, "video": ..., "document": ...,
                          "code": ..., "other": ...},
      "usage_by_folder": {"/photos": {"files": 9, "bytes": 90}, "/": {...files at the top}},
      "usage_by_age":    {"<7d": {...}, "<30d": {...}, "<365d": {...}, "older": {...},
                          "unknown": {...}},
      "largest_files":   [{"path": "/v.mp4", "size": 1, "mtime": 1.7e9}],   # 10 largest
      "history": {"days": [{"date": "2026-11-25", "logical_bytes": 1, "stored_bytes": 1,
                            "files": 1, "by_type": {...}, "recorded_at": 1.7e9}],
                  "growth_bytes_per_day": null},
      "stack_layers": ["validate", "quota", "compress", "local"],
      "layers": {"quota": {...Quota.stats()...}, "dedup": {...}}
    }

* ``layers``: ``stats()`` of every layer or backend of the stack that has the method (duck
  typed, see :func:`aiofs.optimize.scan.layer_stats`): the Quota layer gives usage and
  limits; the Dedup layer will give ``logical_bytes``, ``stored_bytes``, ``dedup_ratio``,
  ``chunks``, ``packs``.
* ``google_drive``: the first filesystem of the stack with a callable ``storage_quota()``
  (the Drive backend, once it exists) fills it; that method returns Drive's ``about.get``
  ``storageQuota`` as numbers: ``limit`` (``None`` = unlimited), ``usage``,
  ``usage_in_drive``, ``usage_in_drive_trash``. Without one, ``connected`` is false and
  every figure null.
* ``stored_bytes + internal_bytes`` is what the store occupies: with a Dedup layer the file
  contents live in its packs under ``.aiofs/`` (``internal_bytes``), not under the names.
* ``local_storage.quota`` is taken from the first layer stats that carry ``max_bytes`` and
  ``used`` (the Quota layer); ``usage_percentage`` is that quota's, else the stack's stored
  bytes as a share of the disk, else null.
* ``usage_by_type``: from file extensions (:func:`aiofs.optimize.scan.category_of`);
  ``usage_by_folder``: the top-level folders below ``path`` (``"/"`` collects the files
  directly in it), largest first; ``usage_by_age``: by modification time against ``now``.
"""

from __future__ import annotations

import datetime
import posixpath
import shutil
import time
from typing import Any

from fsspec.spec import AbstractFileSystem

from aiofs.layer import describe, internal_access, is_internal, target_identity
from aiofs.optimize.scan import (
    AGE_BUCKETS, CATEGORIES, FileEntry, age_bucket, bottom_of, category_of, display,
    layer_name, layer_stats, local_root, normalize_path, scan, stack_of,
)
from aiofs.optimize.usage_history import UsageHistory

__all__ = ["overview", "resolve_stack", "usage_summary", "drive_quota", "LARGEST_FILES"]

LARGEST_FILES = 10
_CHEAP_BOTTOMS = {"aiofs-local", "file", "local", "memory"}


def resolve_stack(stack: str | AbstractFileSystem, config=None) -> tuple[str, AbstractFileSystem]:
    """``(name, filesystem)`` from a stack name, an ``aiofs://STACK`` URL or a filesystem.

    An unknown name gives ``CONFIG_ERROR`` naming the known stacks.
    """
    if isinstance(stack, AbstractFileSystem):
        return repr(stack), stack
    from aiofs.stack import open_stack, stack_name_from_url

    name = stack_name_from_url(stack)
    return name, open_stack(name, config)


def _bucket() -> dict[str, int]:
    return {"files": 0, "bytes": 0}


def usage_summary(files: list[FileEntry], base: str, now: float) -> dict[str, Any]:
    """Usage by type, top-level folder (below ``base``) and age of a list of scanned files."""
    by_type = {c: _bucket() for c in CATEGORIES}
    by_age = {label: _bucket() for label, _ in AGE_BUCKETS}
    by_age["unknown"] = _bucket()
    by_folder: dict[str, dict[str, int]] = {}
    prefix = display(base).rstrip("/") + "/"
    for f in files:
        t = by_type[category_of(f.path)]
        t["files"] += 1
        t["bytes"] += f.size
        a = by_age[age_bucket(f.mtime, now)]
        a["files"] += 1
        a["bytes"] += f.size
        rel = f.path[len(prefix):] if f.path.startswith(prefix) else f.path.lstrip("/")
        head, sep, _ = rel.partition("/")
        folder = prefix + head if sep else prefix.rstrip("/") or "/"
        d = by_folder.get(folder)
        if d is None:
            d = by_folder[folder] = _bucket()
        d["files"] += 1
        d["bytes"] += f.size
    ordered = dict(sorted(by_folder.items(), key=lambda kv: (-kv[1]["bytes"], kv[0])))
    return {"usage_by_type": by_type, "usage_by_folder": ordered, "usage_by_age": by_age}


def drive_quota(fs: AbstractFileSystem) -> dict[str, Any]:
    """The ``google_drive`` part: from the first ``storage_quota()`` in the stack, if any."""
    empty = {"connected": False,
             "quota": {"limit": None, "usage": None, "usage_percentage": None},
             "usage_in_drive": None, "usage_in_drive_trash": None}
    for layer in stack_of(fs):
        method = getattr(layer, "storage_quota", None)
        if not callable(method):
            continue
        try:
            q = method() or {}
        except Exception as exc:  # offline, expired token: the overview still answers
            return {**empty, "error": f"{type(exc).__name__}: {exc}"}
        limit, usage = q.get("limit"), q.get("usage")
        percent = 100.0 * usage / limit if limit and usage is not None else None
        return {"connected": True,
                "quota": {"limit": limit, "usage": usage, "usage_percentage": percent},
                "usage_in_drive": q.get("usage_in_drive"),
                "usage_in_drive_trash": q.get("usage_in_drive_trash")}
    return empty


def _stored(fs: AbstractFileSystem, base: str, files: list[FileEntry]) -> tuple[int | None, int | None]:
    """(stored bytes of the files below ``base``, bytes of internal data) from the bottom."""
    bottom = bottom_of(fs)
    if bottom is fs:
        seen: set = set()
        total = 0
        for f in files:
            key = (f.entry.get("ino"), f.entry.get("nlink"))
            if key[0] is not None and (key[1] or 1) > 1:
                if key[0] in seen:
                    continue
                seen.add(key[0])
            total += f.size
        return total, 0
    protocols = bottom.protocol if isinstance(bottom.protocol, tuple) else (bottom.protocol,)
    if not _CHEAP_BOTTOMS & set(protocols):
        reported = [f.entry.get("stored_size") for f in files]
        if reported and all(isinstance(s, int) for s in reported):
            return sum(reported), None
        return None, None
    with internal_access():
        found = bottom.find(base, detail=True)
    stored = internal = 0
    seen_inodes: set = set()
    for name, entry in found.items():
        if entry.get("type") != "file":
            continue
        ino, nlink = entry.get("ino"), entry.get("nlink") or 1
        if ino is not None and nlink > 1:  # hard links (dedupe --merge): count the data once
            if ino in seen_inodes:
                continue
            seen_inodes.add(ino)
        size = entry.get("size") or 0
        if is_internal(name):
            internal += size
        elif not posixpath.basename(name).startswith(".aiofs-tmp-"):
            stored += size
    return stored, internal



def _quota_of(stats: dict[str, dict]) -> dict | None:
    for value in stats.values():
        if isinstance(value, dict) and "max_bytes" in value and "used" in value:
            limit, used = value["max_bytes"], value["used"]
            percent = 100.0 * used / limit if limit else None
            return {"limit": limit, "usage": used, "usage_percentage": percent}
    return None


def overview(stack: str | AbstractFileSystem = "default", *, path: str = "", config=None,
             name: str | None = None, history: UsageHistory | str | None = None,
             now: float | None = None, today: datetime.date | str | None = None,
             record: bool = True, history_days: int = 90) -> dict[str, Any]:
    """The storage overview of a stack (shape in the module doc).

    ``stack``: a stack name, ``aiofs://STACK`` or a filesystem (then ``name`` labels it in the
    history; default its ``repr``). ``path``: a folder of the stack (default the root).
    ``history``: a :class:`UsageHistory` or the path of its database (default location
    otherwise). ``now`` (epoch seconds) sets the reference time of the age buckets and
    ``today`` the history day (default: the UTC date of ``now``). ``record=False`` only reads
    the history.
    """
    started = time.perf_counter()
    label, fs = resolve_stack(stack, config)
    label = name or label
    now = time.time() if now is None else float(now)
    if today is None:
        today = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc).date()
    base = normalize_path(fs, path)
    files, dirs = scan(fs, base, withdirs=True)
    logical = sum(f.size for f in files)
    summary = usage_summary(files, base, now)
    # top-level folders that hold no files still show, with zeros
    prefix = display(base).rstrip("/") + "/"
    for d in dirs:
        shown = display(d)
        if shown.startswith(prefix) and "/" not in shown[len(prefix):]:
            summary["usage_by_folder"].setdefault(shown, _bucket())
    stored, internal = _stored(fs, base, files)
    stats = layer_stats(fs)
    quota = _quota_of(stats)
    root = local_root(fs)
    disk = None
    if root is not None:
        usage = shutil.disk_usage(root)
        disk = {"total": usage.total, "used": usage.used, "free": usage.free}
    if quota is not None and quota["usage_percentage"] is not None:
        percent = quota["usage_percentage"]
    elif disk is not None and disk["total"]:
        percent = 100.0 * (stored if stored is not None else logical) / disk["total"]
    else:
        percent = None
    largest = sorted(files, key=lambda f: (-f.size, f.path))[:LARGEST_FILES]

    store = history if isinstance(history, UsageHistory) else UsageHistory(history)
    target = target_identity(bottom_of(fs))
    key = label if base in ("", "/", fs.root_marker) else f"{label}:{display(base)}"
    if record:
        store.record(key, target, logical_bytes=logical, stored_bytes=stored, files=len(files),
                     by_type={c: v["bytes"] for c, v in summary["usage_by_type"].items()}, day=today)
    rows = store.rows(key, target, days=history_days, until=today)

    return {
        "stack": label,
        "path": display(base),
        "description": describe(fs),
        "generated_at": datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_seconds": None,  # set last
        "google_drive": drive_quota(fs),
        "local_storage": {
            "root": root,
            "backend": describe(bottom_of(fs)),
            "files": len(files),
            "folders": len(dirs),
            "logical_bytes": logical,
            "stored_bytes": stored,
            "internal_bytes": internal,
            "quota": quota,
            "disk": disk,
            "usage_percentage": percent,
        },
        **summary,
        "largest_files": [{"path": f.path, "size": f.size, "mtime": f.mtime} for f in largest],
        "history": {"days": rows, "growth_bytes_per_day": UsageHistory.growth_per_day(rows)},
        "stack_layers": [layer_name(layer) for layer in stack_of(fs)],
        "layers": stats,
    } | {"elapsed_seconds": round(time.perf_counter() - started, 4)}
