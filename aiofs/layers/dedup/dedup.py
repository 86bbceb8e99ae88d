"""``Dedup``: content-defined deduplication into packs, with verified reads.

Contract (DESIGN.md "The canonical stack"; format in ``docs/formats/dedup.md``):

* **Files are manifests.** Each user file is a small JSON manifest at its own path (size,
  blake3 of the content, chunk list; tiny files inline), so ``mv`` moves a manifest and
  ``cp_file`` copies one: no data moves. ``ls``/``info``/``find`` give logical sizes from
  a local cache checked against the target's stamp of each manifest; misses are read in one
  bulk ``cat``. Entries carry the content's ``blake3`` (hex).
* **Chunks** are cut by FastCDC with a per-store secret gear seed, identified by keyed
  blake3, appended to 16-32 MiB **packs** under ``.aiofs/dedup/packs/`` (never one object
  per chunk) and listed by immutable per-writer **index files** (see :mod:`.store`).
* **Writes** stream with bounded memory: chunking in the caller's thread, hashing in a
  thread pool, packing to one streaming target file at a time. Bulk ``pipe`` writes packs
  and manifests with one bulk call each. Durability order: packs, then the index file,
  then the manifest.
* **Reads** fetch only the chunks a range covers, with ranged reads of the packs, and
  verify every chunk; corruption anywhere is ``INTEGRITY_ERROR`` naming the file.
* ``gc()``, ``check()`` and ``stats()`` are in :mod:`.maintenance`; ``gc`` and writers
  exclude each other with store locks (:mod:`.locks`).
"""

from __future__ import annotations

import bisect
import collections
import io
import os
import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor

import blake3
import fsspec
import platformdirs
from fsspec.spec import AbstractBufferedFile

from aiofs.errors import IntegrityError, InvalidArgument, IsADirectory
from aiofs.layer import (
    Layer, has_glob, hide_internal_path, internal_access, internals_visible, is_internal,
    WriteOnlyFile, refuse_internal_write, stamp_of, target_identity, visible_entries,
)
from aiofs.layers.dedup import formats as fmt
from aiofs.layers.dedup.cache import StoreCache
from aiofs.layers.dedup.chunking import StreamChunker
from aiofs.layers.dedup.locks import StoreLocks
from aiofs.layers.dedup.store import ChunkStore, PackWriter, default_cache_path
from aiofs.units import parse_size

__all__ = ["Dedup", "DEDUP"]

DEDUP = "dedup"  # capability flag: identical content shares storage
MANIFEST_CACHE = 256
COPY_CHUNK = 8 << 20


def _entry_name(entry: dict) -> str:
    name = entry["name"]
    return name.rstrip("/") or name


class Dedup(Layer):
    """Deduplicate every file below this layer into content-defined chunks in packs.

    ``Dedup(fs=target, min_size="16KiB", avg_size="48KiB", max_size="256KiB",
    pack_size="28MiB", inline_limit="16KiB", batch_size="8MiB", threads=None,
    cache_dir=None, index_cache=True)``:

    * ``min_size``/``avg_size``/``max_size``: FastCDC chunk sizes (used when a store is
      created; an existing store keeps the sizes in its config). The mean chunk is about
      ``avg_size + min_size``;
    * ``pack_size``: a pack is sealed once it holds this many bytes (at most 32 MiB);
    * ``inline_limit``: files up to this size are kept inside their manifest;
    * ``batch_size``: bytes chunked and hashed per batch (memory per writer ~3x this);
    * ``threads``: hashing threads; ``cache_dir``: where the local index cache lives;
      ``index_cache=False`` keeps it in memory for this process only.
    """

    protocol = "aiofs-dedup"
    adds_capabilities = frozenset({DEDUP})

    def __init__(
        self,
        fs=None,
        target_protocol=None,
        target_options=None,
        min_size: int | str = "16KiB",
        avg_size: int | str = "48KiB",
        max_size: int | str = "256KiB",
        pack_size: int | str = "28MiB",
        inline_limit: int | str = "16KiB",
        batch_size: int | str = "8MiB",
        threads: int | None = None,
        cache_dir: str | None = None,
        index_cache: bool = True,
        **options,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options,
                         **options)
        self.min_size = parse_size(min_size, "min_size")
        self.avg_size = parse_size(avg_size, "avg_size")
        self.max_size = parse_size(max_size, "max_size")
        if not (64 <= self.min_size <= 1 << 20 and 256 <= self.avg_size <= 4 << 20
                and 1024 <= self.max_size <= 16 << 20
                and self.min_size <= self.avg_size <= self.max_size):
            raise InvalidArgument("chunk sizes need 64 <= min_size <= 1MiB, 256 <= avg_size <= "
                                  "4MiB, 1KiB <= max_size <= 16MiB and min <= avg <= max")
        self.pack_size = parse_size(pack_size, "pack_size")
        if not (1 << 10 <= self.pack_size <= 32 << 20):
            raise InvalidArgument("pack_size must be between 1KiB and 32MiB")
        self.inline_limit = parse_size(inline_limit, "inline_limit")
        if self.inline_limit > 64 << 10:
            raise InvalidArgument("inline_limit must be at most 64KiB")
        self.batch_size = parse_size(batch_size, "batch_size")
        self.threads = max(1, int(threads or os.cpu_count() or 2))
        if cache_dir is None:
            cache_dir = os.path.join(platformdirs.user_cache_dir("aiofs"), "dedup")
        self.cache_dir = os.fspath(cache_dir)
        self.index_cache = bool(index_cache)
        cache_path = default_cache_path(self.cache_dir, target_identity(self.fs)) \
            if index_cache else None
        self.store = ChunkStore(self.fs, StoreCache(cache_path),
                                (self.min_size, self.avg_size, self.max_size), self.pack_size)
        self.locks = StoreLocks(self.store)
        self._manifests: collections.OrderedDict = collections.OrderedDict()
        self._manifests_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def __reduce__(self):
        return _rebuild, (self.fs, dict(
            min_size=self.min_size, avg_size=self.avg_size, max_size=self.max_size,
            pack_size=self.pack_size, inline_limit=self.inline_limit,
            batch_size=self.batch_size, threads=self.threads, cache_dir=self.cache_dir,
            index_cache=self.index_cache, **self.options))

    def executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # none yet, or a forked copy
            with self._pool_lock:
                if self._pool is None or self._pool_pid != os.getpid():
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="aiofs-dedup")
                    self._pool_pid = os.getpid()
        return self._pool

    def close(self) -> None:
        """Release this writer's store lock (also done at exit)."""
        self.locks.release()

    @staticmethod
    def _integrity(path, exc: BaseException) -> IntegrityError:
        return IntegrityError(f"dedup manifest failed verification: {exc}", str(path))

    # -- manifests ----------------------------------------------------------------------------

    def _read_manifest(self, path: str) -> fmt.Manifest:
        """The verified manifest at ``path`` (a small LRU keyed by the target's stamp)."""
        entry = self.fs.info(path)
        if entry.get("type") == "directory":
            raise IsADirectory(f"is a directory: {path!r}", str(path))
        name, stamp = _entry_name(entry), stamp_of(entry)
        if stamp is not None:
            with self._manifests_lock:
                cached = self._manifests.get(name)
                if cached is not None and cached[0] == stamp:
                    self._manifests.move_to_end(name)
                    return cached[1]
        blob = self.fs.cat_file(path)
        try:
            manifest = fmt.Manifest.decode(blob)
        except fmt.FormatError as exc:
            raise self._integrity(path, exc) from None
        if stamp is not None:
            with self._manifests_lock:
                self._manifests[name] = (stamp, manifest)
                while len(self._manifests) > MANIFEST_CACHE:
                    self._manifests.popitem(last=False)
            self.store.cache.put_manifests([(name, stamp, manifest.size, manifest.blake3)])
        return manifest

    def _commit_manifests(self, manifests: dict[str, fmt.Manifest], create: bool = False) -> None:
        """Write manifests (after their chunks are indexed) and cache their summaries."""
        blobs = {p: m.encode() for p, m in manifests.items()}
        if len(blobs) == 1:
            (path, blob), = blobs.items()
            self.fs.pipe_file(path, blob, mode="create" if create else "overwrite")
        else:
            self.fs.pipe(blobs)
        self._remember_written(manifests)

    def _remember_written(self, manifests: dict[str, fmt.Manifest]) -> None:
        try:
            names = {self.fs._strip_protocol(p): m for p, m in manifests.items()}
            self._forget_cached(list(names))
            if len(names) >= 8:
                entries = {}
                for parent in {posixpath.dirname(n) for n in names}:
                    entries.update((_entry_name(e), e) for e in self.fs.ls(parent, detail=True))
            else:
                entries = {n: self.fs.info(n) for n in names}
            rows = []
            for name, manifest in names.items():
                entry = entries.get(name)
                stamp = stamp_of(entry) if entry else None
                if stamp is not None:
                    rows.append((name, stamp, manifest.size, manifest.blake3))
            self.store.cache.put_manifests(rows)
        except Exception:  # the write succeeded: a missing row only costs a read later
            pass

    def _forget_cached(self, names: list[str]) -> None:
        with self._manifests_lock:
            for name in names:
                name = name.rstrip("/")
                for key in [k for k in self._manifests if k == name or k.startswith(name + "/")]:
                    del self._manifests[key]

    def _logical_entries(self, entries: list) -> list:
        """Copies of target entries with logical sizes and content hashes."""
        out = list(entries)
        files = [(i, e) for i, e in enumerate(entries) if e.get("type") == "file"]
        if not files:
            return out
        names = [_entry_name(e) for _, e in files]
        rows = self.store.cache.manifests(names)
        misses = []
        for (i, entry), name in zip(files, names):
            row, stamp = rows.get(name), stamp_of(entry)
            if row is not None and stamp is not None and row[0] == stamp:
                out[i] = {**entry, "size": row[1], "blake3": row[2]}
            else:
                misses.append((i, entry, name))
        if misses:
            blobs = self.fs.cat([name for _, _, name in misses], on_error="return")
            learned = []
            for i, entry, name in misses:
                blob = blobs.get(name)
                if blob is None:
                    blob = next((v for k, v in blobs.items() if k.rstrip("/") == name), None)
                try:
                    if isinstance(blob, BaseException) or blob is None:
                        raise fmt.FormatError(f"unreadable: {blob}")
                    manifest = fmt.Manifest.decode(blob)
                except fmt.FormatError as exc:
                    out[i] = {**entry, "integrity_error": str(self._integrity(name, exc))}
                    continue
                out[i] = {**entry, "size": manifest.size, "blake3": manifest.blake3}
                stamp = stamp_of(entry)
                if stamp is not None:
                    learned.append((name, stamp, manifest.size, manifest.blake3))
            self.store.cache.put_manifests(learned)
        return out

    # -- listing and metadata ---------------------------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        hide_internal_path(path)
        entries = visible_entries(self.fs.ls(path, detail=detail, **kwargs), detail)
        return self._logical_entries(entries) if detail else entries

    def info(self, path, **kwargs):
        hide_internal_path(path)
        return self._logical_entries([self.fs.info(path, **kwargs)])[0]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        if is_internal(path) and not internals_visible():
            return {} if detail else []
        found = self.fs.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        show_internal = internals_visible()
        items = [(k, v) for k, v in found.items() if show_internal or not is_internal(k)]
        if not detail:
            return sorted(k for k, _ in items)
        logical = self._logical_entries([v for _, v in items])
        return {k: entry for (k, _), entry in zip(items, logical)}

    def exists(self, path, **kwargs):
        if is_internal(path) and not internals_visible():
            return False
        try:
            return self.fs.exists(path, **kwargs)
        except Exception:
            return False

    def isdir(self, path):
        if is_internal(path) and not internals_visible():
            return False
        return self.fs.isdir(path)

    def isfile(self, path):
        if is_internal(path) and not internals_visible():
            return False
        return self.fs.isfile(path)

    def size(self, path):
        return self.info(path)["size"]

    def invalidate_cache(self, path=None):
        if path is None:
            with self._manifests_lock:
                self._manifests.clear()
        else:
            self._forget_cached([self.fs._strip_protocol(path)])
        self.fs.invalidate_cache(path)

    # -- reading ----------------------------------------------------------------------------

    @staticmethod
    def _resolve(start, end, size: int) -> tuple[int, int]:
        start = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
        end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        return start, end

    def read_range(self, path: str, manifest: fmt.Manifest, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file ``manifest`` describes: only covering chunks."""
        if end <= start:
            return b""
        if manifest.inline is not None:
            return manifest.inline[start:end]
        offsets = _offsets(manifest)
        first = bisect.bisect_right(offsets, start) - 1
        last = bisect.bisect_left(offsets, end) - 1
        wanted = manifest.chunks[first : last + 1]
        data = self.store.read_chunks(path, [cid for cid, _ in wanted])
        parts, position = [], offsets[first]
        for cid, length in wanted:
            piece = data[cid]
            lo, hi = max(start - position, 0), min(end - position, length)
            parts.append(piece[lo:hi] if (lo, hi) != (0, length) else piece)
            position += length
        return b"".join(parts)

    def cat_file(self, path, start=None, end=None, **kwargs):
        hide_internal_path(path)
        manifest = self._read_manifest(path)
        start, end = self._resolve(start, end, manifest.size)
        data = self.read_range(path, manifest, start, end)
        if start == 0 and end == manifest.size and blake3.blake3(data).hexdigest() != manifest.blake3:
            raise IntegrityError("content does not match the manifest's blake3", str(path))
        return data

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        if isinstance(path, list) and not recursive and not any(has_glob(p) for p in path):
            paths = [self._strip_protocol(p) for p in path]
        else:
            paths = self.expand_path(path, recursive=recursive)
            if len(paths) == 1 and paths[0] == self._strip_protocol(path) and not recursive \
                    and not isinstance(path, list) and not has_glob(path):
                return self.cat_file(paths[0], **kwargs)
        out = {}
        for p in paths:
            try:
                out[p] = self.cat_file(p)
            except Exception as exc:
                if on_error == "raise":
                    raise
                if on_error != "omit":
                    out[p] = exc
        return out

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode not in ("rb", "wb", "xb", "ab"):
            raise InvalidArgument(f"unsupported file mode {mode!r} (use rb, wb, xb or ab)")
        if mode == "rb":
            hide_internal_path(path)
            return DedupReadFile(self, path, self._read_manifest(path), block_size)
        refuse_internal_write(path)
        if mode == "xb" and self.fs.exists(path):
            raise FileExistsError(path)
        existing = None
        if mode == "ab":
            try:
                existing = self._read_manifest(path)
            except FileNotFoundError:
                existing = None
        writer = DedupWriteFile(self, path, create=(mode == "xb"))
        if existing is not None and existing.size:
            try:  # append = old content (all chunks already stored) + new bytes
                for start in range(0, existing.size, COPY_CHUNK):
                    writer.write(self.read_range(path, existing, start,
                                                 min(existing.size, start + COPY_CHUNK)))
            except BaseException:
                writer.discard()
                raise
        return writer

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        hide_internal_path(rpath)
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        manifest = self._read_manifest(rpath)
        callback.set_size(manifest.size)
        hasher = blake3.blake3()

        def copy(dst):
            for start in range(0, manifest.size, COPY_CHUNK):
                data = self.read_range(rpath, manifest, start, min(manifest.size, start + COPY_CHUNK))
                hasher.update(data)
                dst.write(data)
                callback.relative_update(len(data))
            if hasher.hexdigest() != manifest.blake3:
                raise IntegrityError("content does not match the manifest's blake3", str(rpath))

        if outfile is not None:
            return copy(outfile)
        parent = os.path.dirname(os.fspath(lpath))
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(lpath, "wb") as dst:
            copy(dst)

    # -- writing ----------------------------------------------------------------------------

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        refuse_internal_write(path)
        if mode == "create" and self.fs.exists(path):
            raise FileExistsError(path)
        with self.open(path, "xb" if mode == "create" else "wb") as f:
            f.write(value)

    def pipe(self, path, value=None, **kwargs):
        if isinstance(path, str):
            path = {path: value}
        prefix = f"{self.protocol}://"
        path = {type(self)._strip_protocol(k) if isinstance(k, str) and k.startswith(prefix) else k: v
                for k, v in path.items()}
        for p in path:
            refuse_internal_write(p)
        if len(path) == 1:
            (p, v), = path.items()
            return self.pipe_file(p, v)
        self._bulk_write(path)

    def _bulk_write(self, values: dict) -> None:
        """Many files at once: packs with one bulk call, one index file, manifests in bulk."""
        store = self.store
        config = store.config(create=True)
        self.locks.writer_enter()
        packer = PackWriter(store, bulk=True)
        manifests: dict[str, fmt.Manifest] = {}
        jobs = []
        for p, value in values.items():
            value = bytes(value)
            if len(value) <= self.inline_limit:
                manifests[p] = fmt.Manifest(size=len(value), blake3=blake3.blake3(value).hexdigest(),
                                            inline=value)
                continue
            jobs.append((p, value, self.executor().submit(_chunk_whole, config, value)))
        for p, value, future in jobs:
            bounds, ids, digest = future.result()
            known = store.cache.known(ids)
            view = memoryview(value)
            packer.append_many([(cid, view[s:e]) for cid, (s, e) in zip(ids, bounds)
                                if cid not in known])
            manifests[p] = fmt.Manifest(size=len(value), blake3=digest,
                                        chunks=tuple((cid, e - s) for cid, (s, e) in zip(ids, bounds)))
        try:
            store.write_index(packer.finish())
        except BaseException:
            packer.abandon()
            raise
        self._commit_manifests(manifests)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        refuse_internal_write(rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        with open(lpath, "rb") as src:
            callback.set_size(os.fstat(src.fileno()).st_size)
            with self.open(rpath, "xb" if mode == "create" else "wb") as dst:
                while data := src.read(COPY_CHUNK):
                    dst.write(data)
                    callback.relative_update(len(data))

    def cp_file(self, path1, path2, **kwargs):
        hide_internal_path(path1)
        refuse_internal_write(path2)
        self.fs.cp_file(path1, path2, **kwargs)  # a manifest copy: no chunk moves
        self._forget_cached([self.fs._strip_protocol(path2)])

    def touch(self, path, truncate=True, **kwargs):
        refuse_internal_write(path)
        if truncate or not self.fs.exists(path):
            self.pipe_file(path, b"")
        else:
            self.fs.touch(path, truncate=False, **kwargs)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        result = super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        for p in (path1 if isinstance(path1, list) else [path1]) + [path2]:
            if isinstance(p, str) and not has_glob(p):
                self._forget_paths([p])
        return result

    def rm_file(self, path):
        result = super().rm_file(path)
        self._forget_paths([path])
        return result

    def rm(self, path, recursive=False, maxdepth=None):
        result = super().rm(path, recursive=recursive, maxdepth=maxdepth)
        paths = path if isinstance(path, list) else [path]
        self._forget_paths([p for p in paths if isinstance(p, str) and not has_glob(p)])
        return result

    def _forget_paths(self, paths: list) -> None:
        names = [self.fs._strip_protocol(p) for p in paths]
        self._forget_cached(names)
        self.store.cache.forget_manifests(names)

    # -- maintenance ----------------------------------------------------------------------------

    def gc(self, repack_threshold: float = 0.3, safety_window: float = 3600.0,
           dry_run: bool = False) -> dict:
        """Delete unreferenced packs, repack mostly-garbage ones; see :mod:`.maintenance`."""
        from aiofs.layers.dedup.maintenance import collect
        return collect(self, repack_threshold=repack_threshold, safety_window=safety_window,
                       dry_run=dry_run)

    def check(self, read_data: bool = False) -> dict:
        """Verify manifests -> index -> packs (and every chunk with ``read_data``)."""
        from aiofs.layers.dedup.maintenance import check
        return check(self, read_data=read_data)

    def stats(self) -> dict:
        """Logical bytes, stored bytes, dedup ratio, chunk and pack counts."""
        from aiofs.layers.dedup.maintenance import stats
        return stats(self)


def _offsets(manifest: fmt.Manifest) -> list[int]:
    return manifest.offsets  # computed once per manifest (a big file has thousands of chunks)


def _chunk_whole(config: fmt.StoreConfig, value: bytes):
    """``(bounds, ids, blake3 hex)`` of one whole value (a worker-thread job)."""
    chunker = StreamChunker(config)
    _, bounds, ids = chunker.cut([value], final=True)
    return bounds, ids, chunker.whole.hexdigest()


def _rebuild(fs, options):
    return Dedup(fs=fs, **options)


# -- files -------------------------------------------------------------------------------------


class DedupWriteFile(WriteOnlyFile, io.BufferedIOBase):
    """A file being written through :class:`Dedup`.

    Written bytes are collected into batches of ``batch_size``; each batch is chunked and
    hashed in a worker thread of its own (in order: a chunk may span two batches) while
    this thread appends the new chunks of the previous batch to a streaming pack. At most
    two batches are in flight, so memory stays bounded. :meth:`close` seals the pack,
    writes the index file and then the manifest; :meth:`discard` (or an exception inside
    ``with``) leaves the old file as it was (sealed packs stay as unreferenced data).
    """

    MAX_IN_FLIGHT = 2

    def __init__(self, layer: Dedup, path: str, create: bool = False):
        super().__init__()
        self.layer = layer
        self.path = path
        self.mode = "wb"
        self._create = create
        store = layer.store
        self._config = store.config(create=True)
        layer.locks.writer_enter()
        self._chunker = StreamChunker(self._config)
        self._cutter: ThreadPoolExecutor | None = None
        self._pieces: list = []
        self._pieces_size = 0
        self._size = 0
        self._chunks: list[tuple[bytes, int]] = []
        self._packer = PackWriter(store)
        self._pending: collections.deque = collections.deque()
        self._done = False

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Nothing to do: data becomes a file only at close."""

    def write(self, data) -> int:
        if self._done:
            raise ValueError("I/O operation on closed file")
        # the caller may reuse a mutable buffer: keep only immutable bytes
        piece = data if isinstance(data, bytes) else bytes(memoryview(data).cast("B"))
        try:
            self._pieces.append(piece)
            self._pieces_size += len(piece)
            if self._pieces_size >= self.layer.batch_size:
                self._submit(final=False)
        except BaseException:
            self._abandon()
            raise
        self._size += len(piece)
        return len(piece)

    def _submit(self, final: bool) -> None:
        pieces, self._pieces, self._pieces_size = self._pieces, [], 0
        if self._cutter is None:
            self._cutter = ThreadPoolExecutor(1, thread_name_prefix="aiofs-dedup-cut")
        self._pending.append(self._cutter.submit(self._chunker.cut, pieces, final))
        while len(self._pending) > self.MAX_IN_FLIGHT:
            self._drain_one()

    def _drain_one(self) -> None:
        data, bounds, ids = self._pending.popleft().result()
        self._store_batch(data, bounds, ids)

    def _store_batch(self, data: bytes, bounds, ids) -> None:
        known = self.layer.store.cache.known(ids)
        view = memoryview(data)
        fresh = []
        for cid, (s, e) in zip(ids, bounds):
            self._chunks.append((cid, e - s))
            if cid not in known:
                fresh.append((cid, view[s:e]))
        self._packer.append_many(fresh)

    def close(self) -> None:
        """Seal packs, write the index file, then the manifest (the file appears)."""
        if self._done:
            return
        layer = self.layer
        try:
            if not self._pending and self._size <= layer.inline_limit:
                inline = b"".join(self._pieces)
                manifest = fmt.Manifest(size=self._size, blake3=blake3.blake3(inline).hexdigest(),
                                        inline=inline)
            else:
                if self._pending:
                    self._submit(final=True)
                    while self._pending:
                        self._drain_one()
                else:  # one batch: no thread hop
                    pieces, self._pieces = self._pieces, []
                    self._store_batch(*self._chunker.cut(pieces, final=True))
                layer.store.write_index(self._packer.finish())
                manifest = fmt.Manifest(size=self._size, blake3=self._chunker.whole.hexdigest(),
                                        chunks=tuple(self._chunks))
            self._done = True
            layer._commit_manifests({self.path: manifest}, create=self._create)
        except BaseException:
            self._done = False
            self._abandon()
            raise
        finally:
            self._stop_cutter()
            super().close()

    def _stop_cutter(self) -> None:
        if self._cutter is not None:
            self._cutter.shutdown(wait=True, cancel_futures=True)
            self._cutter = None

    def discard(self) -> None:
        """Abandon the write: the file keeps its old content (or stays absent)."""
        self._abandon()

    def _abandon(self) -> None:
        if self._done:
            return
        self._done = True
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._stop_cutter()
        self._pieces = []
        self._packer.abandon()
        super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()


class DedupReadFile(AbstractBufferedFile):
    """A deduplicated file opened for reading: each block fetches only its chunks."""

    DEFAULT_BLOCK_SIZE = 4 << 20

    def __init__(self, layer: Dedup, path: str, manifest: fmt.Manifest, block_size=None):
        self.manifest = manifest
        super().__init__(layer, path, mode="rb", block_size=block_size or self.DEFAULT_BLOCK_SIZE,
                         cache_type="readahead", size=manifest.size)

    def _fetch_range(self, start, end):
        return self.fs.read_range(self.path, self.manifest, start, min(end, self.manifest.size))
