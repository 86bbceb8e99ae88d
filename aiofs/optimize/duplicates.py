"""Identical files by content hash on any stack, and merging them where the stack can share storage.

Contract:

* :func:`find_duplicates` lists the stack once (``find(detail=True)``). A file whose entry
  already carries its whole-content blake3 (the key ``"blake3"``, a hex string, as the Dedup
  layer reports it) is never read. The others are grouped by size first; only files that
  share their size with another are read, through the stack (so what is compared is the
  content users see): files over 1 MiB are first compared on a blake3 of their first
  64 KiB, and only those still alike are hashed whole. Reads stream in 1 MiB blocks in a
  thread pool (blake3 and the layers' codecs release the GIL). Empty files are ignored
  (``min_size``). A file that vanishes or fails to read during the scan is listed under
  ``errors`` and left out.
* :func:`merge_duplicates` makes duplicates share storage, where the stack can:

  - a **Dedup layer** in the stack (found by duck typing: a layer whose class name contains
    ``dedup`` or whose ``adds_capabilities`` / ``capabilities`` hold ``"dedup"``; never
    imported): identical content already shares its chunks. Nothing to do; the report says
    so, with the layer's ``stats()``.
  - a plain **local store** (``LocalBackend`` at the bottom, which every layer reaches under
    the same path): the stored objects of each group are read from disk and compared; those
    with identical stored bytes (layers that store identical bytes for identical content:
    Compress, Quota, Validate; not Encrypt, whose keys differ per file) are hard-linked to
    one of them: ``link`` to a temporary name in the directory, then ``rename`` over the
    duplicate, so each name always holds its full content. ``LocalBackend`` writes are a
    temporary file renamed over the name (appends copy first), so a later write to one name
    gives it a new inode and leaves the other names untouched. Objects changed since they
    were compared are skipped. ``bytes_saved`` counts the stored bytes of the objects whose
    last link went away.
  - anything else: ``mode == "unsupported"`` with the reason; nothing changes.

  Besides, a filesystem of the stack that can hold **several files under one name** (Google
  Drive: a callable ``merge_duplicate_names(path)``, found by duck typing) makes every name
  unique first: extra copies with the same MD5 go to its trash, the others are renamed
  ``name (2).ext``; its report is ``duplicate_names`` (``None`` when no such filesystem).
"""

from __future__ import annotations

import os
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blake3
from fsspec.spec import AbstractFileSystem

from aiofs.optimize.overview import resolve_stack
from aiofs.optimize.scan import (
    FileEntry, bottom_of, dedup_layer, describe_stack, normalize_path, scan, stack_of,
)

__all__ = ["find_duplicates", "merge_duplicates", "dedup_layer", "hash_file", "HASH_KEY"]

TEMP_PREFIX = ".aiofs-tmp-"   # LocalBackend never lists names starting with this
HASH_KEY = "blake3"           # entry key of a known whole-content blake3 (hex)
BLOCK = 1 << 20
PREFIX = 64 << 10             # first-pass prefix for large files
PREFIX_MIN_SIZE = 1 << 20     # files larger than this get the prefix pass
WHOLE_READ_MAX = 4 << 20      # files up to this size are read with one cat_file


def _threads(threads: int | None) -> int:
    return threads or min(8, 2 * (os.cpu_count() or 1))


def hash_file(fs: AbstractFileSystem, name: str, size: int, limit: int | None = None) -> str:
    """blake3 (hex) of a file's content as the stack returns it (the first ``limit`` bytes)."""
    want = size if limit is None else min(size, limit)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if want >= (16 << 20) else 1)
    if want <= WHOLE_READ_MAX:
        data = fs.cat_file(name, start=0, end=want) if limit is not None else fs.cat_file(name)
        hasher.update(data)
    else:
        remaining = want
        with fs.open(name, "rb", block_size=BLOCK) as f:
            while remaining > 0:
                block = f.read(min(BLOCK * 4, remaining))
                if not block:
                    break
                hasher.update(block)
                remaining -= len(block)
    return hasher.hexdigest()


def _known_hash(entry: dict) -> str | None:
    value = entry.get(HASH_KEY)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str) and value:
        return value.lower()
    return None


def find_duplicates(stack: str | AbstractFileSystem = "default", path: str = "", *, config=None,
                    threads: int | None = None, min_size: int = 1,
                    progress: Callable[[int, int], None] | None = None,
                    files: list[FileEntry] | None = None) -> dict[str, Any]:
    """Groups of identical files below ``path`` (see the module doc).

    Returns ``{"stack", "path", "files_scanned", "files_hashed", "bytes_hashed",
    "known_hashes", "groups": [{"hash", "size", "count", "paths", "wasted_bytes",
    "stored_wasted_bytes"}], "duplicate_files", "wasted_bytes", "errors", "elapsed_seconds"}``;
    groups are largest waste first, paths sorted. ``progress(done, total)`` is called as
    files are hashed. ``files``: the result of :func:`aiofs.optimize.scan.scan` of the same
    path, when the caller has one (no second listing).
    """
    started = time.perf_counter()
    label, fs = resolve_stack(stack, config)
    base = normalize_path(fs, path)
    if files is None:
        files, _ = scan(fs, base)
    files = [f for f in files if f.size >= max(min_size, 0)]

    by_key: dict[tuple[int, str], list[FileEntry]] = defaultdict(list)
    unknown_by_size: dict[int, list[FileEntry]] = defaultdict(list)
    known = 0
    for f in files:
        digest = _known_hash(f.entry)
        if digest is not None:
            by_key[(f.size, digest)].append(f)
            known += 1
        else:
            unknown_by_size[f.size].append(f)
    known_sizes = {size for size, _ in by_key}
    to_hash = [f for size, group in unknown_by_size.items()
               if len(group) > 1 or size in known_sizes for f in group]

    errors: list[dict] = []
    stats = {"files": 0, "bytes": 0}
    total = len(to_hash)

    def run(items: list[FileEntry], limit: int | None) -> dict[int, str]:
        out: dict[int, str] = {}

        def one(f: FileEntry) -> tuple[FileEntry, str | None]:
            try:
                return f, hash_file(fs, f.name, f.size, limit)
            except (OSError, ValueError) as exc:
                errors.append({"path": f.path, "error": f"{type(exc).__name__}: {exc}"})
                return f, None

        if not items:
            return out
        with ThreadPoolExecutor(_threads(threads), thread_name_prefix="aiofs-dedupe") as pool:
            for f, digest in pool.map(one, items):
                if digest is not None:
                    out[id(f)] = digest
                    stats["bytes"] += f.size if limit is None else min(f.size, limit)
                if limit is None:
                    stats["files"] += 1
                    if progress is not None:
                        progress(stats["files"], total)
        return out

    # large files: compare a prefix first, hash whole only those still alike
    large = [f for f in to_hash if f.size > PREFIX_MIN_SIZE]
    prefixes = run(large, PREFIX)
    alike: dict[tuple[int, str], list[FileEntry]] = defaultdict(list)
    for f in large:
        if id(f) in prefixes:
            alike[(f.size, prefixes[id(f)])].append(f)
    whole = [f for f in to_hash if f.size <= PREFIX_MIN_SIZE]
    whole += [f for key, group in alike.items()
              if len(group) > 1 or key[0] in known_sizes for f in group]
    total = len(whole)
    digests = run(whole, None)
    for f in whole:
        if id(f) in digests:
            by_key[(f.size, digests[id(f)])].append(f)

    groups = []
    for (size, digest), members in by_key.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda f: f.path)
        # copies that are hard links of one stored object (an earlier --merge) store it once
        objects: dict[Any, int] = {}
        for f in members:
            ino = f.entry.get("ino")
            shared = ino is not None and (f.entry.get("nlink") or 1) > 1
            objects[("ino", ino) if shared else ("path", f.path)] = f.stored_size
        stored = sorted(objects.values())
        groups.append({
            "hash": digest, "size": size, "count": len(members),
            "paths": [f.path for f in members],
            "wasted_bytes": size * (len(members) - 1),
            "stored_wasted_bytes": sum(stored[:-1]),
        })
    groups.sort(key=lambda g: (-g["wasted_bytes"], g["paths"][0]))
    return {
        "stack": label, "path": "/" + base.strip("/"),
        "files_scanned": len(files), "files_hashed": stats["files"], "bytes_hashed": stats["bytes"],
        "known_hashes": known,
        "groups": groups,
        "duplicate_files": sum(g["count"] - 1 for g in groups),
        "wasted_bytes": sum(g["wasted_bytes"] for g in groups),
        "errors": sorted(errors, key=lambda e: e["path"]),
        "elapsed_seconds": round(time.perf_counter() - started, 4),
    }


def _stored_digest(full: str) -> tuple[str, os.stat_result]:
    before = os.stat(full)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if before.st_size >= (16 << 20) else 1)
    with open(full, "rb") as f:
        while block := f.read(BLOCK * 4):
            hasher.update(block)
    return hasher.hexdigest(), before


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_dev, b.st_size, b.st_mtime_ns)


def _link_all(members: list[tuple[str, str, os.stat_result]], result: dict[str, Any]) -> None:
    """Hard-link every stored object of ``members`` (identical stored bytes) to one of them."""
    # keep the object that already has the most links; then the first path
    members = sorted(members, key=lambda m: (-m[2].st_nlink, m[0]))
    _, k_full, k_st = members[0]
    for shown, full, st in members[1:]:
        if st.st_ino == k_st.st_ino:
            result["already_shared_files"] += 1
            continue
        try:
            if not _same(os.stat(full), st) or not _same(os.stat(k_full), k_st):
                result["skipped"].append({"path": shown, "reason": "changed during the merge"})
                continue
            temp = os.path.join(os.path.dirname(full), f"{TEMP_PREFIX}{secrets.token_hex(8)}-link")
            os.link(k_full, temp)
            try:
                os.replace(temp, full)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError as exc:
            result["skipped"].append({"path": shown, "reason": f"could not link: {exc.strerror or exc}"})
            continue
        result["merged_files"] += 1
        if st.st_nlink == 1:
            result["bytes_saved"] += st.st_size
        k_st = os.stat(k_full)


def _merge_duplicate_names(fs: AbstractFileSystem, path: str) -> dict | None:
    """Let the first filesystem of the stack that has ``merge_duplicate_names`` (Drive) make
    its names unique; ``None`` when the stack has none."""
    for member in stack_of(fs):
        method = getattr(member, "merge_duplicate_names", None)
        if callable(method):
            return method(path)
    return None


def merge_duplicates(stack: str | AbstractFileSystem = "default", path: str = "", *, config=None,
                     report: dict | None = None, threads: int | None = None) -> dict[str, Any]:
    """Make the duplicates below ``path`` share storage where the stack can (module doc).

    ``report`` is a :func:`find_duplicates` result to reuse (else one is computed). Returns
    ``{"mode": "dedup-layer" | "hardlink" | "unsupported", "detail", "merged_files",
    "bytes_saved", "already_shared_files", "skipped": [{"path", "reason"}], "layer_stats",
    "duplicate_names"}``.
    """
    label, fs = resolve_stack(stack, config)
    if report is None:
        report = find_duplicates(fs, path, threads=threads)
    result: dict[str, Any] = {"mode": "unsupported", "detail": "", "merged_files": 0,
                              "bytes_saved": 0, "already_shared_files": 0, "skipped": [],
                              "layer_stats": None}
    result["duplicate_names"] = _merge_duplicate_names(fs, path)
    layer = dedup_layer(fs)
    if layer is not None:
        stats = getattr(layer, "stats", None)
        result.update(
            mode="dedup-layer",
            detail=(f"{type(layer).__name__} already stores identical content once: the "
                    f"{report['duplicate_files']} duplicate files share their chunks; nothing to do"),
            already_shared_files=report["duplicate_files"],
            layer_stats=stats() if callable(stats) else None,
        )
        return result
    bottom = bottom_of(fs)
    full_of = getattr(bottom, "_full", None)
    root = getattr(bottom, "root", None)
    if not (callable(full_of) and isinstance(root, str) and type(bottom).__name__ == "LocalBackend"):
        result["detail"] = (f"{describe_stack(fs)} cannot share storage between files: no Dedup "
                            f"layer, and its bottom is not a local store (hard links)")
        return result
    result["mode"] = "hardlink"
    for group in report["groups"]:
        names = [normalize_path(fs, p) for p in group["paths"]]
        by_digest: dict[tuple[str, int], list[tuple[str, str, os.stat_result]]] = defaultdict(list)
        for shown, name in zip(group["paths"], names):
            full = full_of(name)
            try:
                digest, st = _stored_digest(full)
            except OSError as exc:
                result["skipped"].append({"path": shown, "reason": f"unreadable: {exc.strerror or exc}"})
                continue
            by_digest[(digest, st.st_dev)].append((shown, full, st))
        for members in by_digest.values():
            if len(members) < 2:
                if len(by_digest) > 1:
                    result["skipped"].append({"path": members[0][0], "reason": (
                        "stored bytes differ from an identical file's (a layer stores each "
                        "copy differently, e.g. encryption)")})
                continue
            _link_all(members, result)
    fs.invalidate_cache()
    result["detail"] = (f"hard-linked {result['merged_files']} duplicate files on "
                        f"{describe_stack(bottom)}")
    return result
