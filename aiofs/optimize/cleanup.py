"""Cleanup: temporary files, old files in chosen folders, and what layers offer to drop.

Contract:

* :func:`find_cleanup` is the **dry run**: one ``find(detail=True)`` of the stack (or of a
  folder of it) and the hooks below; nothing changes. Candidates:

  - ``temp``: files whose name matches a temporary-file pattern (case-insensitive globs on
    the base name; default :data:`DEFAULT_TEMP_PATTERNS`: ``*.tmp``, ``~$*`` (Office owner
    files), ``.~lock.*#`` (LibreOffice locks), ``*.swp``, ``.DS_Store``, ``Thumbs.db``,
    ``*.part``, ``*.crdownload``) and untouched for ``temp_min_age_hours`` (default 24, so a
    download or an editor session in progress is left alone);
  - ``old``: files in one of ``folders`` (and below) not modified for ``older_than_days``
    days; both must be given (by argument or by the config file's ``[cleanup]`` table), so
    old files are never collected from the whole store by accident;
  - ``version`` (or any reason a layer names): entries returned by a layer's
    ``cleanup_candidates(now=...)`` method, found by duck typing on every layer of the stack.
    A layer (the Versioning layer, "versions beyond the rules") implements it by returning
    dicts with ``path``, ``size`` (bytes freed) and ``reason``, plus any keys it needs to
    recognise the item later (``version_id``...), and applies them in
    ``apply_cleanup(candidates) -> int`` (bytes freed). No layer implements it yet.

* :func:`apply_cleanup` acts on exactly the candidates of a dry run: each file is checked
  again (same size and modification time) and removed with ``rm_file``; a file changed or
  gone since the scan is skipped and reported, never removed. Hook candidates go back to
  the layer that offered them. The summary gives files removed and bytes freed (logical,
  and stored: a stored object with other hard links frees nothing).

* Bad input: negative ages give ``INVALID_ARGUMENT``, folders that leave the stack root
  ``INVALID_PATH``, an unknown stack ``CONFIG_ERROR``; nothing changes.
"""

from __future__ import annotations

import fnmatch
import posixpath
import time
from dataclasses import asdict, dataclass
from typing import Any

from fsspec.spec import AbstractFileSystem

from aiofs.errors import InvalidArgument
from aiofs.optimize.overview import resolve_stack
from aiofs.optimize.scan import (
    DAY, FileEntry, check_days, dedup_layer, display, layer_name, mtime_of, normalize_path, scan,
    stack_of, stored_estimate,
)

__all__ = ["DEFAULT_TEMP_PATTERNS", "CleanupRules", "find_cleanup", "apply_cleanup", "cleanup",
           "hook_candidates", "scan_candidates"]

DEFAULT_TEMP_PATTERNS = ("*.tmp", "~$*", ".~lock.*#", "*.swp", ".DS_Store", "Thumbs.db",
                         "*.part", "*.crdownload")
DEFAULT_TEMP_MIN_AGE_HOURS = 24.0


@dataclass
class CleanupRules:
    """What counts as removable. Built from the config file's ``[cleanup]`` table by
    :meth:`from_config`, with explicit arguments taking precedence."""

    temp_patterns: tuple[str, ...] = DEFAULT_TEMP_PATTERNS
    temp_min_age_hours: float = DEFAULT_TEMP_MIN_AGE_HOURS
    older_than_days: float | None = None
    folders: tuple[str, ...] = ()
    temp: bool = True
    hooks: bool = True

    def __post_init__(self):
        self.temp_patterns = tuple(self.temp_patterns)
        self.folders = tuple(self.folders)
        hours = check_days(self.temp_min_age_hours, "temp_min_age_hours")
        self.temp_min_age_hours = DEFAULT_TEMP_MIN_AGE_HOURS if hours is None else hours
        self.older_than_days = check_days(self.older_than_days, "older_than_days")
        if self.older_than_days is not None and not self.folders:
            raise InvalidArgument("files older than N days are collected only from named folders: "
                                  "give --folder (or [cleanup] folders in the config file)")
        if self.folders and self.older_than_days is None:
            raise InvalidArgument("folders to clean need an age: give --older-than DAYS "
                                  "(or [cleanup] older_than_days in the config file)")

    @classmethod
    def from_config(cls, config=None, *, temp_patterns=None, temp_min_age_hours=None,
                    older_than_days=None, folders=None, temp: bool = True, hooks: bool = True) -> CleanupRules:
        """Rules from ``[cleanup]`` of the config (a loaded ``Config``, a path, or the default
        file), each overridden by the argument when it is not ``None``."""
        from aiofs.config import Config, load_config

        table = (config if isinstance(config, Config) else load_config(config)).cleanup
        if folders is None:
            folders = table.get("folders", ())
        if older_than_days is None:
            older_than_days = table.get("older_than_days")
        return cls(
            temp_patterns=temp_patterns or table.get("temp_patterns", DEFAULT_TEMP_PATTERNS),
            temp_min_age_hours=(temp_min_age_hours if temp_min_age_hours is not None
                                else table.get("temp_min_age_hours", DEFAULT_TEMP_MIN_AGE_HOURS)),
            older_than_days=older_than_days, folders=tuple(folders or ()), temp=temp, hooks=hooks,
        )

    @classmethod
    def temp_only(cls, config=None) -> CleanupRules:
        """Only the temporary-file rules of ``[cleanup]`` (what ``recommend`` looks at)."""
        from aiofs.config import Config, load_config

        table = (config if isinstance(config, Config) else load_config(config)).cleanup
        return cls(temp_patterns=table.get("temp_patterns", DEFAULT_TEMP_PATTERNS),
                   temp_min_age_hours=table.get("temp_min_age_hours", DEFAULT_TEMP_MIN_AGE_HOURS),
                   hooks=False)

    def is_temp(self, path: str) -> bool:
        """True when the base name matches a temporary-file pattern (any case)."""
        name = posixpath.basename(path).lower()
        return any(fnmatch.fnmatchcase(name, p.lower()) for p in self.temp_patterns)


def _candidate(f: FileEntry, reason: str, kind: str) -> dict[str, Any]:
    nlink = f.entry.get("nlink") or 1
    return {"path": f.path, "size": f.size, "stored_size": 0 if nlink > 1 else f.stored_size,
            "mtime": f.mtime, "kind": kind, "reason": reason, "source": "scan"}


def hook_candidates(fs: AbstractFileSystem, now: float, base: str = "") -> list[dict[str, Any]]:
    """Candidates offered by layers' ``cleanup_candidates(now=...)`` (module doc), below ``base``."""
    out: list[dict[str, Any]] = []
    prefix = display(base).rstrip("/") + "/"
    for position, layer in enumerate(stack_of(fs)):
        method = getattr(layer, "cleanup_candidates", None)
        if not callable(method):
            continue
        applicable = callable(getattr(layer, "apply_cleanup", None))
        for item in method(now=now) or ():
            path = display(str(item.get("path", "")))
            if prefix != "/" and not (path + "/").startswith(prefix):
                continue
            size = int(item.get("size") or 0)
            out.append({**item, "path": path, "size": size, "stored_size": int(item.get("stored_size", size)),
                        "kind": str(item.get("kind", "version")),
                        "reason": str(item.get("reason", "offered by " + layer_name(layer))),
                        "source": layer_name(layer), "layer": position, "applicable": applicable})
    return out


def scan_candidates(files: list[FileEntry], rules: CleanupRules, now: float,
                    folders: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``temp`` and ``old`` candidates among scanned files (``folders`` as displayed,
    default the rules' own)."""
    if folders is None:
        folders = [display(f.strip("/")) for f in rules.folders]
    temp_before = now - rules.temp_min_age_hours * 3600
    old_before = None if rules.older_than_days is None else now - rules.older_than_days * DAY
    candidates = []
    for f in files:
        name = posixpath.basename(f.path).lower()
        pattern = None
        if rules.temp:
            pattern = next((p for p in rules.temp_patterns if fnmatch.fnmatchcase(name, p.lower())), None)
        if pattern is not None:
            if f.mtime is None or f.mtime <= temp_before:
                candidates.append(_candidate(f, f"temporary file ({pattern})", "temp"))
        elif old_before is not None and f.mtime is not None and f.mtime < old_before:
            folder = next((d for d in folders if d == "/" or f.path.startswith(d.rstrip("/") + "/")), None)
            if folder is not None:
                age = (now - f.mtime) / DAY
                candidates.append(_candidate(
                    f, f"not modified for {age:.0f} days (> {rules.older_than_days:g}) in {folder}", "old"))
    return candidates


def find_cleanup(stack: str | AbstractFileSystem = "default", path: str = "", *, config=None,
                 rules: CleanupRules | None = None, now: float | None = None) -> dict[str, Any]:
    """The dry run: what would be removed and why (module doc); changes nothing.

    Returns ``{"stack", "path", "dry_run": True, "rules", "candidates": [{"path", "size",
    "stored_size", "mtime", "kind", "reason", "source"}], "by_kind": {kind: {"files",
    "bytes"}}, "files", "bytes", "stored_bytes", "missing_folders", "notes"}``.
    """
    label, fs = resolve_stack(stack, config)
    rules = rules or CleanupRules.from_config(config)
    now = time.time() if now is None else float(now)
    base = normalize_path(fs, path)
    folders = [display(normalize_path(fs, folder)) for folder in rules.folders]
    files, dirs = scan(fs, base, withdirs=True)
    known_dirs = {display(d) for d in dirs} | {display(base)}
    missing = [f for f in folders if f not in known_dirs and f != "/"]
    candidates = scan_candidates(files, rules, now, folders)
    notes = []
    if candidates and dedup_layer(fs) is not None:
        # chunks are shared: what removing these files gives back is an estimate, and it comes
        # back when the Dedup layer collects its garbage
        by_path = {f.path: f for f in files}
        total = sum(c["size"] for c in candidates)
        estimate = stored_estimate(fs, [by_path[c["path"]] for c in candidates])
        for c in candidates:
            c["stored_size"] = int(c["size"] * estimate / total) if total else 0
        notes.append("stored sizes are estimates (Dedup shares chunks); the space returns when "
                     "the Dedup layer collects garbage (aiofs gc)")
    if rules.hooks:
        candidates += hook_candidates(fs, now, base)
    candidates.sort(key=lambda c: (c["kind"], c["path"]))
    by_kind: dict[str, dict[str, int]] = {}
    for c in candidates:
        k = by_kind.setdefault(c["kind"], {"files": 0, "bytes": 0})
        k["files"] += 1
        k["bytes"] += c["size"]
    return {
        "stack": label, "path": display(base), "dry_run": True,
        "rules": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(rules).items()},
        "candidates": candidates, "by_kind": by_kind,
        "files": len(candidates), "bytes": sum(c["size"] for c in candidates),
        "stored_bytes": sum(c["stored_size"] for c in candidates),
        "missing_folders": missing, "notes": notes,
    }


def apply_cleanup(stack: str | AbstractFileSystem, plan: dict[str, Any], *, config=None) -> dict[str, Any]:
    """Remove exactly the candidates of ``plan`` (a :func:`find_cleanup` result), checking
    each file first. Returns ``{"removed": [paths], "files", "bytes_freed",
    "stored_bytes_freed", "skipped": [{"path", "reason"}]}``."""
    _, fs = resolve_stack(stack, config)
    removed: list[str] = []
    skipped: list[dict[str, str]] = []
    freed = stored_freed = 0
    by_layer: dict[tuple[str, int], list[dict]] = {}
    for c in plan["candidates"]:
        if c.get("source", "scan") != "scan":
            by_layer.setdefault((c["source"], int(c.get("layer", -1))), []).append(c)
            continue
        name = normalize_path(fs, c["path"])
        try:
            info = fs.info(name)
        except FileNotFoundError:
            skipped.append({"path": c["path"], "reason": "gone since the scan"})
            continue
        if info.get("type") != "file" or info.get("size") != c["size"] or mtime_of(info) != c["mtime"]:
            skipped.append({"path": c["path"], "reason": "changed since the scan"})
            continue
        try:
            fs.rm_file(name)
        except OSError as exc:
            skipped.append({"path": c["path"], "reason": f"could not remove: {exc}"})
            continue
        removed.append(c["path"])
        freed += c["size"]
        stored_freed += c["stored_size"]
    chain = stack_of(fs)
    for (source, position), items in by_layer.items():
        layer = chain[position] if 0 <= position < len(chain) else None
        method = getattr(layer, "apply_cleanup", None)
        if not callable(method):
            skipped += [{"path": c["path"], "reason": f"{source} offers no apply_cleanup()"} for c in items]
            continue
        result = method(items)
        freed_here = int(result.get("bytes_freed", 0) if isinstance(result, dict) else result or 0)
        freed += freed_here
        stored_freed += freed_here
        removed += [c["path"] for c in items]
    if removed:
        fs.invalidate_cache()
    return {"removed": removed, "files": len(removed), "bytes_freed": freed,
            "stored_bytes_freed": stored_freed, "skipped": skipped}


def cleanup(stack: str | AbstractFileSystem = "default", path: str = "", *, config=None,
            rules: CleanupRules | None = None, apply: bool = False, now: float | None = None) -> dict[str, Any]:
    """Dry run by default; with ``apply=True`` the candidates are removed and the result has
    ``"dry_run": False`` and ``"applied"`` (the :func:`apply_cleanup` summary)."""
    plan = find_cleanup(stack, path, config=config, rules=rules, now=now)
    plan["applied"] = None
    if apply:
        plan["applied"] = apply_cleanup(stack, plan, config=config)
        plan["dry_run"] = False
    return plan
