"""Ranked recommendations, each with its estimated saving in bytes, from real statistics.

Contract: :func:`recommend` lists the stack once, then looks at what that listing, the
layers' ``stats()`` and a few bounded reads say. Kinds, each included only when it applies:

* ``quota``: a quota (a layer's ``stats()`` with ``max_bytes`` and ``used``, or the Drive
  quota) at or above ``quota_threshold`` percent (default 80). Its saving is the bytes to
  free to fall back under that threshold.
* ``compress``: only when no compression layer is in the stack (duck typed: a layer whose
  class name contains ``compress``). Files of at least ``large_file_size`` (1 MiB) are
  candidates; the ``sample_files`` largest (32) are sampled, three ``sample_bytes`` (256 KiB)
  ranges each (start, middle, end), compressed with zstd level 3, and a file whose samples
  save under 3 % counts as incompressible (what the Compress layer would store raw). Other
  candidates get the byte-weighted ratio of the sampled files of their type.
* ``duplicates``: the stored bytes of the extra copies found by
  :func:`aiofs.optimize.duplicates.find_duplicates` (skipped when a Dedup layer already
  shares them). The action is ``aiofs dedupe --merge`` on a local store.
* ``temporary``: temporary files (:mod:`aiofs.optimize.cleanup` rules and config).
* ``versions`` (or any kind a layer names): what layers offer through the
  ``cleanup_candidates()`` hook (versions beyond the rules, once Versioning implements it).
* ``cold``: files not modified for ``cold_days`` (180) days, whose stored bytes could move
  to an archive stack.

Items are ranked by ``saving_bytes`` (largest first); each carries ``rank``, ``kind``,
``title``, ``detail``, ``saving_bytes``, ``files`` and ``action``. Savings are estimates
of stored bytes; the kinds overlap (a cold duplicate is counted in both), so they are not
added up into a promise.
"""

from __future__ import annotations

import time
from typing import Any

import pyzstd
from fsspec.spec import AbstractFileSystem

from aiofs.errors import InvalidArgument
from aiofs.optimize.cleanup import CleanupRules, hook_candidates, scan_candidates
from aiofs.optimize.duplicates import find_duplicates
from aiofs.optimize.overview import drive_quota, resolve_stack
from aiofs.optimize.scan import (
    DAY, FileEntry, bottom_of, category_of, check_days, dedup_layer, display, has_layer_named,
    layer_stats, normalize_path, scan, stored_estimate, stored_fraction,
)

__all__ = ["recommend", "estimate_compression", "MIN_SAVING"]

MIN_SAVING = 0.03  # below this the Compress layer stores a frame raw


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _sample_ratio(fs: AbstractFileSystem, f: FileEntry, sample_bytes: int) -> float:
    """Compressed/original size of three samples of a file (start, middle, end)."""
    size = f.size
    if size <= 3 * sample_bytes:
        ranges = [(0, size)]
    else:
        middle = (size - sample_bytes) // 2
        ranges = [(0, sample_bytes), (middle, middle + sample_bytes), (size - sample_bytes, size)]
    original = compressed = 0
    for start, end in ranges:
        data = fs.cat_file(f.name, start=start, end=end)
        original += len(data)
        compressed += len(pyzstd.compress(data, 3))
    return compressed / original if original else 1.0


def estimate_compression(fs: AbstractFileSystem, files: list[FileEntry], *, large_file_size: int = 1 << 20,
                         sample_files: int = 32, sample_bytes: int = 256 << 10) -> dict[str, Any]:
    """Estimated bytes zstd would save on the large files (see the module doc)."""
    candidates = sorted((f for f in files if f.size >= large_file_size), key=lambda f: (-f.size, f.path))
    sampled = candidates[:sample_files]
    per_type: dict[str, list[int]] = {}  # category -> [original bytes, estimated stored bytes]
    saving = 0.0
    errors = 0
    for f in sampled:
        try:
            ratio = _sample_ratio(fs, f, sample_bytes)
        except OSError:
            errors += 1
            continue
        if ratio > 1 - MIN_SAVING:
            ratio = 1.0
        saving += f.size * (1 - ratio)
        acc = per_type.setdefault(category_of(f.path), [0, 0])
        acc[0] += f.size
        acc[1] += int(f.size * ratio)
    total_orig = sum(v[0] for v in per_type.values())
    overall = (sum(v[1] for v in per_type.values()) / total_orig) if total_orig else 1.0
    for f in candidates[sample_files:]:
        acc = per_type.get(category_of(f.path))
        ratio = acc[1] / acc[0] if acc and acc[0] else overall
        saving += f.size * (1 - ratio)
    return {"files": len(candidates), "bytes": sum(f.size for f in candidates),
            "sampled_files": len(sampled) - errors, "saving_bytes": int(saving)}


def _quota_items(fs: AbstractFileSystem, threshold: float) -> list[dict[str, Any]]:
    items = []
    quotas = [(name, s.get("max_bytes"), s.get("used")) for name, s in layer_stats(fs).items()
              if isinstance(s, dict) and "max_bytes" in s and "used" in s]
    drive = drive_quota(fs)
    if drive["connected"]:
        quotas.append(("google_drive", drive["quota"]["limit"], drive["quota"]["usage"]))
    for name, limit, used in quotas:
        if not limit or used is None:
            continue
        percent = 100.0 * used / limit
        if percent < threshold:
            continue
        need = int(used - limit * threshold / 100.0) + 1
        items.append({
            "kind": "quota", "title": f"{name} quota at {percent:.0f}% of {_human(limit)}",
            "detail": (f"{_human(used)} used of {_human(limit)}; free {_human(need)} to fall back "
                       f"under {threshold:g}% (or raise the limit)"),
            "saving_bytes": need, "files": 0,
            "action": "apply the recommendations below, or raise max_bytes / MAX_LOCAL_STORAGE_GB",
        })
    return items


def recommend(stack: str | AbstractFileSystem = "default", path: str = "", *, config=None,
              now: float | None = None, cold_days: float = 180, large_file_size: int = 1 << 20,
              sample_files: int = 32, sample_bytes: int = 256 << 10, quota_threshold: float = 80.0,
              rules: CleanupRules | None = None, threads: int | None = None) -> dict[str, Any]:
    """Ranked recommendations for a stack (see the module doc).

    Returns ``{"stack", "path", "recommendations": [{"rank", "kind", "title", "detail",
    "saving_bytes", "files", "action"}], "statistics": {...}, "elapsed_seconds"}``.
    """
    started = time.perf_counter()
    cold_days = check_days(cold_days, "cold_days")
    if large_file_size < 0 or sample_files < 0 or sample_bytes < 1:
        raise InvalidArgument("sizes and counts must be non-negative")
    label, fs = resolve_stack(stack, config)
    now = time.time() if now is None else float(now)
    base = normalize_path(fs, path)
    files, _ = scan(fs, base)
    stack_arg = label if base in ("", "/") else f"{label}:{display(base)}"
    items: list[dict[str, Any]] = []
    fraction = stored_fraction(fs)  # asks a Dedup layer once, if there is one
    stats: dict[str, Any] = {"files": len(files), "logical_bytes": sum(f.size for f in files),
                             "stored_bytes": stored_estimate(fs, files, fraction)}

    items += _quota_items(fs, quota_threshold)

    compressor = has_layer_named(fs, "compress")
    if compressor is None:
        est = estimate_compression(fs, files, large_file_size=large_file_size,
                                   sample_files=sample_files, sample_bytes=sample_bytes)
        stats["compression"] = est
        if est["saving_bytes"] > 0:
            items.append({
                "kind": "compress",
                "title": f"compress {est['files']} large files",
                "detail": (f"{est['files']} files of at least {_human(large_file_size)} hold "
                           f"{_human(est['bytes'])}; zstd on samples of {est['sampled_files']} "
                           f"of them saves about {_human(est['saving_bytes'])}"),
                "saving_bytes": est["saving_bytes"], "files": est["files"],
                "action": "add { type = \"compress\" } to this stack's layers (aiofs.layers.Compress)",
            })
    else:
        stats["compression"] = {"layer": type(compressor).__name__}

    if dedup_layer(fs) is None:
        dupes = find_duplicates(fs, base, threads=threads, files=files)
        stats["duplicates"] = {k: dupes[k] for k in ("duplicate_files", "wasted_bytes", "files_hashed",
                                                      "bytes_hashed")}
        saving = sum(g["stored_wasted_bytes"] for g in dupes["groups"])
        if saving > 0:
            local = type(bottom_of(fs)).__name__ == "LocalBackend"
            items.append({
                "kind": "duplicates",
                "title": f"merge {dupes['duplicate_files']} duplicate files",
                "detail": (f"{len(dupes['groups'])} groups of identical files; the extra copies "
                           f"store {_human(saving)}"),
                "saving_bytes": saving, "files": dupes["duplicate_files"],
                "action": (f"aiofs dedupe {stack_arg} --merge" if local else
                           f"remove the extra copies (aiofs dedupe {stack_arg} lists them)"),
            })
    else:
        stats["duplicates"] = {"layer": "dedup"}

    rules = rules or CleanupRules.temp_only(config)
    temp = [c for c in scan_candidates(files, rules, now) if c["kind"] == "temp"]
    by_path = {f.path: f for f in files}
    if temp:
        items.append({
            "kind": "temporary", "title": f"delete {len(temp)} temporary files",
            "detail": "editor, office, download and OS leftovers (" + ", ".join(
                sorted({c["reason"].split("(")[-1].rstrip(")") for c in temp})[:5]) + ")",
            "saving_bytes": stored_estimate(fs, [by_path[c["path"]] for c in temp], fraction),
            "files": len(temp),
            "action": f"aiofs cleanup {stack_arg} --apply",
        })
    hooked: dict[str, list[dict]] = {}
    for c in hook_candidates(fs, now, base):
        hooked.setdefault(c["kind"], []).append(c)
    for kind, cands in sorted(hooked.items()):
        items.append({
            "kind": "versions" if kind == "version" else kind,
            "title": f"prune {len(cands)} {'old versions' if kind == 'version' else kind + ' items'}",
            "detail": f"offered by {', '.join(sorted({c['source'] for c in cands}))}: "
                      + "; ".join(sorted({c['reason'] for c in cands})[:3]),
            "saving_bytes": sum(c["stored_size"] for c in cands), "files": len(cands),
            "action": f"aiofs cleanup {stack_arg} --apply",
        })

    cold_before = now - cold_days * DAY
    cold = [f for f in files if f.mtime is not None and f.mtime < cold_before]
    if cold:
        saving = stored_estimate(fs, cold, fraction)
        items.append({
            "kind": "cold", "title": f"archive {len(cold)} cold files",
            "detail": f"not modified for over {cold_days:g} days: {_human(saving)} stored",
            "saving_bytes": saving, "files": len(cold),
            "action": "move them to an archive stack (aiofs mv) or cold storage",
        })

    items = [i for i in items if i["saving_bytes"] > 0]
    items.sort(key=lambda i: (-i["saving_bytes"], i["kind"]))
    for rank, item in enumerate(items, 1):
        item["rank"] = rank
    return {"stack": label, "path": display(base), "recommendations": items, "statistics": stats,
            "elapsed_seconds": round(time.perf_counter() - started, 4)}
