"""``gc``, ``check`` and ``stats`` of a dedup store.

* **Manifests** are every object of the target outside ``.aiofs/dedup/`` that starts like a
  manifest, so versions another layer keeps under ``.aiofs/`` (written through Dedup) are
  marked too. Objects under ``.aiofs/`` that are not manifests belong to other layers and
  are skipped; a user-visible object that is not a valid manifest is a problem: ``check``
  reports it and ``gc`` refuses to sweep (it cannot know what that file references).
* **gc**: mark the chunks all manifests reference; sweep packs older than the safety window
  (a concurrent writer's fresh packs are never touched): a pack with no live chunk is
  deleted, a pack whose garbage exceeds ``repack_threshold`` has its live chunks copied to
  new packs first, and small packs (under a quarter of ``pack_size``: files written one by
  one seal one each) are merged into full ones. Then one consolidated index file replaces the old ones, and only then
  are old packs deleted. ``gc`` holds the store's gc lock (no writer runs meanwhile).
* **check**: config, index files, packs present and long enough for what the index says
  they hold, manifests against the index; with ``read_data``, every pack is read whole:
  its trailer must agree with the index and every chunk must verify.
"""

from __future__ import annotations

import datetime
import posixpath
import time

import blake3

from aiofs.errors import IntegrityError
from aiofs.layer import internal_access, is_internal
from aiofs.layers.dedup import formats as fmt
from aiofs.layers.dedup.store import STORE_DIR, PackWriter

MANIFEST_BATCH = 256


def _mtime(entry: dict) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = entry.get(key)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _store_prefix(layer) -> str:
    return layer.fs._strip_protocol(STORE_DIR)


def scan_manifests(layer, problems: list | None = None):
    """Yield ``(path, Manifest)`` for every manifest below the layer (versions included).

    Unreadable or invalid user-visible objects are appended to ``problems`` as dicts.
    """
    fs = layer.fs
    own = _store_prefix(layer)
    with internal_access():
        found = fs.find(fs.root_marker or "", detail=True)
    names = [n for n, e in found.items() if e.get("type") == "file"
             and not (n == own or n.startswith(own + "/"))]
    for start in range(0, len(names), MANIFEST_BATCH):
        batch = names[start : start + MANIFEST_BATCH]
        with internal_access():
            blobs = fs.cat(batch, on_error="return")
        for name in batch:
            blob = blobs.get(name)
            if blob is None:
                blob = next((v for k, v in blobs.items() if k.rstrip("/") == name), None)
            internal = is_internal(name)
            if isinstance(blob, BaseException) or blob is None:
                if not isinstance(blob, FileNotFoundError) and not internal and problems is not None:
                    problems.append(_problem(name, f"unreadable manifest: {blob}"))
                continue
            if internal and not fmt.looks_like_manifest(blob):
                continue  # another layer's data
            try:
                yield name, fmt.Manifest.decode(blob)
            except fmt.FormatError as exc:
                if problems is not None:
                    problems.append(_problem(name, f"invalid manifest: {exc}"))


def _problem(path: str, detail: str) -> dict:
    return {"path": path, "code": IntegrityError.code, "detail": detail}


def read_all_index_files(store) -> tuple[dict[str, list[tuple[bytes, int, int]]], list[str], list[dict]]:
    """(pack -> chunks from every index file, the index file names, problems)."""
    names = store.list_index_files()
    packs: dict[str, list[tuple[bytes, int, int]]] = {}
    problems = []
    if not names:
        return packs, names, problems
    with internal_access():
        blobs = store.fs.cat(names, on_error="return")
    for name in names:
        blob = blobs.get(name)
        if blob is None:
            blob = next((v for k, v in blobs.items() if k.rstrip("/") == name), None)
        try:
            if isinstance(blob, BaseException) or blob is None:
                raise fmt.FormatError(f"unreadable: {blob}")
            for pack, chunks in fmt.decode_index(blob).items():
                packs.setdefault(pack, [])
                packs[pack].extend(c for c in chunks if c not in packs[pack])
        except fmt.FormatError as exc:
            problems.append(_problem(name, f"index file: {exc}"))
    return packs, names, problems


# -- check -------------------------------------------------------------------------------------


def check(layer, read_data: bool = False) -> dict:
    """A report ``{"ok", "manifests", "chunks", "packs", "problems": [...]}``."""
    store = layer.store
    problems: list[dict] = []
    try:
        config = store.config()
    except IntegrityError as exc:
        return {"ok": False, "manifests": 0, "chunks": 0, "packs": 0, "unreferenced_packs": 0,
                "problems": [_problem(store.config_path, str(exc))]}
    indexed, _, index_problems = read_all_index_files(store)
    problems += index_problems
    on_disk = store.list_packs()
    location: dict[bytes, tuple[str, int, int]] = {}
    for pack, chunks in indexed.items():
        entry = on_disk.get(pack)
        if entry is None:
            problems.append(_problem(pack, "pack listed in the index is missing"))
            continue
        end = max((offset + length for _, offset, length in chunks), default=0)
        if end > entry["size"]:
            problems.append(_problem(pack, "pack is shorter than its index says (truncated)"))
            continue
        for cid, offset, length in chunks:
            location[cid] = (pack, offset, length)
        if read_data and config is not None:
            try:  # the pack's own trailer must agree with the index, and every chunk verify
                trailer = store.read_pack_trailer(pack, entry["size"])
            except (fmt.FormatError, IntegrityError, OSError) as exc:
                problems.append(_problem(pack, f"pack trailer: {exc}"))
                continue
            if set(trailer) != set(chunks):
                problems.append(_problem(pack, "pack trailer and index disagree"))
            problems += _verify_pack_data(store, pack, trailer)
    manifests = 0
    referenced: set[str] = set()
    for name, manifest in scan_manifests(layer, problems):
        manifests += 1
        for cid, length in manifest.chunks:
            where = location.get(cid)
            if where is None:
                problems.append(_problem(name, f"references missing chunk {cid.hex()[:16]}"))
                break
            if where[2] != length:
                problems.append(_problem(name, f"chunk {cid.hex()[:16]} length differs from index"))
                break
            referenced.add(where[0])
    return {"ok": not problems, "manifests": manifests, "chunks": len(location),
            "packs": len(on_disk), "unreferenced_packs": len(set(on_disk) - referenced),
            "problems": problems}


def _verify_pack_data(store, pack: str, trailer) -> list[dict]:
    key = store.config().chunk_key
    with internal_access():
        blob = store.fs.cat_file(pack)
    if not blob.startswith(fmt.PACK_MAGIC):
        return [_problem(pack, "pack does not start with the pack magic")]
    view = memoryview(blob)
    bad = [cid for cid, offset, length in trailer
           if blake3.blake3(view[offset : offset + length], key=key).digest() != cid]
    if bad:
        return [_problem(pack, f"{len(bad)} chunk(s) fail verification (first {bad[0].hex()[:16]})")]
    return []


# -- gc ----------------------------------------------------------------------------------------


def collect(layer, repack_threshold: float = 0.3, safety_window: float = 3600.0,
            dry_run: bool = False) -> dict:
    """Mark and sweep; a report of what was (or, with ``dry_run``, would be) done."""
    store = layer.store
    if store.config() is None:
        return {"packs_deleted": 0, "packs_repacked": 0, "bytes_freed": 0, "dry_run": dry_run,
                "live_chunks": 0}
    if not dry_run:
        layer.locks.gc_enter()
    try:
        return _collect_locked(layer, repack_threshold, safety_window, dry_run)
    finally:
        if not dry_run:
            layer.locks.gc_exit()


def _collect_locked(layer, repack_threshold: float, safety_window: float, dry_run: bool) -> dict:
    store = layer.store
    indexed, index_names, problems = read_all_index_files(store)
    live: set[bytes] = set()
    for _, manifest in scan_manifests(layer, problems):
        live.update(manifest.chunk_ids())
    if problems:
        raise IntegrityError(
            f"gc stopped before deleting anything: {len(problems)} problem(s), first "
            f"{problems[0]['path']}: {problems[0]['detail']} (run `aiofs check`)", store.root)
    on_disk = store.list_packs()
    now = time.time()
    delete, repack, keep = [], [], {}
    bytes_freed = 0
    for pack, entry in on_disk.items():
        mtime = _mtime(entry)
        young = mtime is None or now - mtime < safety_window
        chunks = indexed.get(pack)
        if chunks is None:  # not in any index: a crashed writer's pack (or a fresh one)
            if not young:
                delete.append(pack)
                bytes_freed += entry["size"]
            continue
        live_bytes = sum(n for cid, _, n in chunks if cid in live)
        total = sum(n for _, _, n in chunks) or 1
        if young or live_bytes == total:
            keep[pack] = chunks
        elif live_bytes == 0:
            delete.append(pack)
            bytes_freed += entry["size"]
        elif 1 - live_bytes / total > repack_threshold:
            repack.append(pack)
            bytes_freed += total - live_bytes
        else:
            keep[pack] = chunks
    # small packs (each small file written alone seals one) are merged into full ones, so
    # the store holds few large objects however files arrived
    small = [p for p, chunks in keep.items() if on_disk[p]["size"] < store.pack_size // 4
             and not (_mtime(on_disk[p]) is None or now - _mtime(on_disk[p]) < safety_window)]
    merged = len(small) if len(small) >= 2 else 0
    if merged:
        for pack in small:
            repack.append(pack)
            del keep[pack]
    report = {"packs_deleted": len(delete), "packs_repacked": len(repack) - merged,
              "packs_merged": merged,
              "bytes_freed": bytes_freed, "live_chunks": len(live), "dry_run": dry_run,
              "packs_kept": len(keep)}
    if dry_run or not (delete or repack or len(index_names) > 1):
        return report
    new_packs: dict[str, list[tuple[bytes, int, int]]] = {}
    if repack:
        kept_ids = {cid for chunks in keep.values() for cid, _, _ in chunks}
        writer = PackWriter(store)
        try:
            for pack in repack:
                wanted = [cid for cid, _, _ in indexed[pack] if cid in live and cid not in kept_ids]
                if not wanted:
                    continue
                data = store.read_chunks(pack, wanted)
                for cid in wanted:
                    if cid not in writer:
                        writer.append(cid, data[cid])
                kept_ids.update(wanted)
            new_packs = writer.finish()
        except BaseException:
            writer.abandon()
            raise
    # one consolidated index first, then the old index files, then the old packs
    new_index = store.write_index({**keep, **new_packs})
    store.remove([n for n in index_names if n != new_index])
    store.remove(delete + repack)
    store.refresh_index()
    return report


# -- stats -------------------------------------------------------------------------------------


def stats(layer) -> dict:
    """Logical and stored bytes, dedup ratio, chunk and pack counts (cheap: listings only).

    One listing of the whole target (internals included) serves every figure: the user's
    manifests give the logical bytes (sizes from the manifest cache), our own directory
    the packs and index files, and every other object counts as stored as it is.
    """
    store = layer.store
    own = _store_prefix(layer)
    with internal_access():
        try:
            everything = layer.fs.find(layer.fs.root_marker or "", detail=True)
        except FileNotFoundError:
            everything = {}
    internal, visible, manifests_stored = {}, [], 0
    for name, entry in everything.items():
        if name.startswith(own + "/"):
            internal[name] = entry
        elif entry.get("type") == "file":
            manifests_stored += entry.get("size", 0)
            if not is_internal(name):
                visible.append(entry)
    logical = sum(e["size"] for e in layer._logical_entries(visible))
    packs = [e for n, e in internal.items() if n.startswith(store.packs_dir + "/")]
    stored = sum(e.get("size", 0) for e in internal.values()) + manifests_stored
    if store.config() is not None:
        store.ensure_fresh()
    chunks, _, unique = store.cache.counts()
    return {"logical_bytes": logical, "stored_bytes": stored, "unique_chunk_bytes": unique,
            "dedup_ratio": round(logical / stored, 3) if stored else None,
            "chunks": chunks, "packs": len(packs),
            "pack_bytes": sum(e.get("size", 0) for e in packs)}
