"""``ChunkStore``: the chunk repository a Dedup layer keeps under ``.aiofs/dedup/``.

Contract (format in ``docs/formats/dedup.md``):

* ``config`` is read once, or created exclusively by the first writer (random gear seed and
  chunk-id key per store). Chunk ids are keyed blake3 digests of the chunk bytes.
* Chunks are appended to **pack** objects of ``pack_size`` bytes (16-32 MiB by default);
  a pack ends with a trailer listing its chunks and is immutable once written.
* After packs are durable, an immutable **index file** named ``<writer id>-<n>`` lists
  them; only then may a manifest refer to their chunks (packs, index, manifest: a crash
  leaves unreferenced data, never a manifest pointing at missing chunks).
* The local :class:`~aiofs.layers.dedup.cache.StoreCache` mirrors the index files; it is
  refreshed from the store's listing of ``index/`` when a chunk is not found, and fully
  reloaded when an index file it loaded is gone.
* Every chunk read is verified against its id; a mismatch is ``INTEGRITY_ERROR``.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import secrets
import threading
from collections.abc import Iterable

import blake3

from aiofs.errors import IntegrityError
from aiofs.layer import internal_access
from aiofs.layers.dedup import formats as fmt
from aiofs.layers.dedup.cache import StoreCache

STORE_DIR = ".aiofs/dedup"
MERGE_GAP = 64 << 10  # chunks of one pack this close together are fetched in one range


class ChunkStore:
    """Config, packs, index files and chunk reads of one store on a target filesystem."""

    def __init__(self, fs, cache: StoreCache, chunking: tuple[int, int, int], pack_size: int):
        self.fs = fs
        self.cache = cache
        self.chunking = chunking
        self.pack_size = pack_size
        self.root = fs._strip_protocol(STORE_DIR)
        self.config_path = posixpath.join(self.root, "config")
        self.packs_dir = posixpath.join(self.root, "packs")
        self.index_dir = posixpath.join(self.root, "index")
        self.locks_dir = posixpath.join(self.root, "locks")
        self.writer_id = secrets.token_hex(8)
        self._index_counter = itertools.count()
        self._config: fmt.StoreConfig | None = None
        self._lock = threading.RLock()
        self._refreshed = False

    # -- config --------------------------------------------------------------------------------

    def config(self, create: bool = False) -> fmt.StoreConfig | None:
        """The store's config; with ``create``, made (exclusively) when there is none yet."""
        if self._config is not None:
            return self._config
        with self._lock:
            if self._config is not None:
                return self._config
            with internal_access():
                try:
                    blob = self.fs.cat_file(self.config_path)
                except FileNotFoundError:
                    if not create:
                        return None
                    blob = self._create_config()
            try:
                config = fmt.StoreConfig.decode(blob)
            except fmt.FormatError as exc:
                raise IntegrityError(f"dedup store config: {exc}", self.config_path) from None
            self.cache.bind(config.store_id)
            self._config = config
            return config

    def _create_config(self) -> bytes:
        blob = fmt.StoreConfig.new(*self.chunking).encode()
        self.fs.makedirs(self.root, exist_ok=True)
        try:
            self.fs.pipe_file(self.config_path, blob, mode="create")
        except FileExistsError:  # another writer made it first: use theirs
            return self.fs.cat_file(self.config_path)
        return self.fs.cat_file(self.config_path)  # what the store holds is what counts

    def chunk_id(self, data) -> bytes:
        """The keyed blake3 id of a chunk."""
        return blake3.blake3(data, key=self.config(create=True).chunk_key).digest()

    def trailer_hash(self, body: bytes) -> bytes:
        return blake3.blake3(body, key=self.config(create=True).chunk_key).digest()

    # -- writing packs and index files -------------------------------------------------------

    def new_pack_name(self) -> str:
        return posixpath.join(self.packs_dir, secrets.token_hex(16))

    def write_index(self, packs: dict[str, list[tuple[bytes, int, int]]]) -> str | None:
        """Persist one immutable index file for ``packs`` (already durable); load it."""
        if not packs:
            return None
        name = posixpath.join(self.index_dir, f"{self.writer_id}-{next(self._index_counter):08d}")
        with internal_access():
            self.fs.pipe_file(name, fmt.encode_index(packs))
        self.cache.add_index(name, packs)
        return name

    # -- the index cache -----------------------------------------------------------------------

    def list_index_files(self) -> list[str]:
        with internal_access():
            try:
                return sorted(e.rstrip("/") for e in self.fs.ls(self.index_dir, detail=False))
            except FileNotFoundError:
                return []

    def refresh_index(self) -> None:
        """Bring the local index up to date with the store's index files."""
        if self.config() is None:
            return
        with self._lock:
            present = set(self.list_index_files())
            loaded = self.cache.loaded_index_files()
            if loaded - present:  # gc consolidated or removed some: reload everything
                self.cache.reset_index()
                loaded = set()
            missing = sorted(present - loaded)
            if not missing:
                self._refreshed = True
                return
            with internal_access():
                blobs = self.fs.cat(missing, on_error="return") if len(missing) > 1 else \
                    {missing[0]: self._cat_or_error(missing[0])}
            for name in missing:
                blob = blobs.get(name)
                if blob is None:
                    blob = next((v for k, v in blobs.items() if k.rstrip("/").endswith(name)), None)
                if isinstance(blob, FileNotFoundError) or blob is None:
                    continue  # removed between listing and reading
                if isinstance(blob, BaseException):
                    raise blob
                try:
                    packs = fmt.decode_index(blob)
                except fmt.FormatError as exc:
                    raise IntegrityError(f"dedup index file: {exc}", name) from None
                self.cache.add_index(name, packs)
            self._refreshed = True

    def _cat_or_error(self, name: str):
        try:
            return self.fs.cat_file(name)
        except Exception as exc:
            return exc

    def ensure_fresh(self) -> None:
        """Refresh the index once per store object (later: on a chunk not found)."""
        if not self._refreshed:
            self.refresh_index()

    # -- reading chunks --------------------------------------------------------------------------

    def read_chunks(self, path: str, ids: list[bytes]) -> dict[bytes, bytes]:
        """The verified bytes of the chunks ``ids``, fetched with few ranged reads."""
        self.ensure_fresh()
        wanted = list(dict.fromkeys(ids))
        for attempt in range(2):
            where = self.cache.locate(wanted)
            if len(where) < len(wanted) and attempt == 0:
                self.refresh_index()
                continue
            missing = [cid for cid in wanted if cid not in where]
            if missing:
                raise IntegrityError(
                    f"{len(missing)} chunk(s) of this file are missing from the store "
                    f"(first {missing[0].hex()[:16]})", path)
            try:
                return self._fetch(path, where)
            except FileNotFoundError:
                if attempt == 1:
                    raise IntegrityError("a pack holding this file's chunks is missing", path) from None
                self.refresh_index()  # a concurrent gc repacked: the index knows the new place
        raise AssertionError("unreachable")

    def _fetch(self, path: str, where: dict[bytes, tuple[str, int, int]]) -> dict[bytes, bytes]:
        by_pack: dict[str, list[tuple[int, int, bytes]]] = {}
        for cid, (pack, offset, length) in where.items():
            by_pack.setdefault(pack, []).append((offset, length, cid))
        paths, starts, ends, members = [], [], [], []
        for pack, items in by_pack.items():
            items.sort()
            group: list[tuple[int, int, bytes]] = []
            for item in items:
                if group and item[0] - (group[-1][0] + group[-1][1]) > MERGE_GAP:
                    paths.append(pack), starts.append(group[0][0])
                    ends.append(group[-1][0] + group[-1][1]), members.append(group)
                    group = []
                group.append(item)
            paths.append(pack), starts.append(group[0][0])
            ends.append(group[-1][0] + group[-1][1]), members.append(group)
        with internal_access():
            if len(paths) == 1:
                pieces = [self.fs.cat_file(paths[0], start=starts[0], end=ends[0])]
            else:
                pieces = self.fs.cat_ranges(paths, starts, ends, on_error="return")
        key = self.config().chunk_key
        out: dict[bytes, bytes] = {}
        for piece, start, group in zip(pieces, starts, members):
            if isinstance(piece, FileNotFoundError):
                raise piece
            if isinstance(piece, BaseException):
                if isinstance(piece, IntegrityError):
                    raise IntegrityError(f"a pack of this file failed verification: {piece}", path)
                raise piece
            view = memoryview(piece)
            for offset, length, cid in group:
                data = view[offset - start : offset - start + length]
                if len(data) != length or blake3.blake3(data, key=key).digest() != cid:
                    raise IntegrityError(
                        f"chunk {cid.hex()[:16]} failed verification (corrupt pack)", path)
                out[cid] = data.tobytes()
        return out

    # -- maintenance helpers --------------------------------------------------------------------

    def list_packs(self) -> dict[str, dict]:
        """``pack path -> target entry`` of every pack in the store."""
        with internal_access():
            try:
                return {e["name"].rstrip("/"): e for e in self.fs.ls(self.packs_dir, detail=True)
                        if e.get("type") == "file"}
            except FileNotFoundError:
                return {}

    def read_pack_trailer(self, pack: str, stored: int) -> list[tuple[bytes, int, int]]:
        """The verified chunk list of one pack, from its trailer (two ranged reads)."""
        with internal_access():
            footer = self.fs.cat_file(pack, start=max(0, stored - fmt.PACK_FOOTER.size), end=stored)
            count, length, digest = fmt.parse_pack_footer(footer)
            start = stored - fmt.PACK_FOOTER.size - length
            if start < len(fmt.PACK_MAGIC):
                raise fmt.FormatError("pack trailer longer than the pack")
            body = self.fs.cat_file(pack, start=start, end=start + length)
        return fmt.parse_pack_entries(body, digest, self.trailer_hash, stored)

    def remove(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if paths:
            with internal_access():
                self.fs.rm(paths)


class PackWriter:
    """Appends chunks to pack objects on the target; a pack is sealed at ``pack_size``.

    ``bulk=True`` builds packs in memory and writes them with one ``pipe`` call at
    :meth:`finish` (for bulk writes); otherwise each pack streams to a target file opened
    ``"wb"`` (bounded memory). A full streaming pack is closed (made durable) in a
    background thread while the next one fills, so its fsync overlaps the chunking and
    compression of what follows; at most one pack closes at a time. :meth:`finish` waits
    for every close and returns the sealed packs' chunk lists: only then may an index
    name them.
    """

    def __init__(self, store: ChunkStore, bulk: bool = False):
        self.store = store
        self.bulk = bulk
        self.sealed: dict[str, list[tuple[bytes, int, int]]] = {}
        self._blobs: dict[str, bytes] = {}
        self._name: str | None = None
        self._file = None
        self._parts: list = []
        self._entries: list[tuple[bytes, int, int]] = []
        self._offset = 0
        self._ids: set[bytes] = set()
        self._closer: threading.Thread | None = None
        self._close_error: BaseException | None = None

    def __contains__(self, cid: bytes) -> bool:
        return cid in self._ids

    def append_many(self, chunks: list) -> None:
        """Append ``(id, bytes)`` pairs, writing runs of them with one call each."""
        run: list = []
        for cid, data in chunks:
            if cid in self._ids:
                continue
            if self._name is None:
                self._start()
            run.append(data)
            self._entries.append((cid, self._offset, len(data)))
            self._ids.add(cid)
            self._offset += len(data)
            if self._offset >= self.store.pack_size:
                self._write_run(run)
                run = []
                self._seal()
        if run:
            self._write_run(run)

    def _write_run(self, run: list) -> None:
        if self.bulk:
            self._parts.extend(run)
        else:
            with internal_access():
                self._file.write(b"".join(run) if len(run) > 1 else run[0])

    def append(self, cid: bytes, data) -> None:
        if cid in self._ids:
            return
        if self._name is None:
            self._start()
        if self.bulk:
            self._parts.append(data)
        else:
            with internal_access():
                self._file.write(data)
        self._entries.append((cid, self._offset, len(data)))
        self._ids.add(cid)
        self._offset += len(data)
        if self._offset >= self.store.pack_size:
            self._seal()

    def _start(self) -> None:
        self._name = self.store.new_pack_name()
        self._entries = []
        self._offset = len(fmt.PACK_MAGIC)
        if self.bulk:
            self._parts = [fmt.pack_header()]
        else:
            with internal_access():
                self.store.fs.makedirs(self.store.packs_dir, exist_ok=True)
                self._file = self.store.fs.open(self._name, "wb")
                self._file.write(fmt.pack_header())

    def _seal(self) -> None:
        trailer = fmt.pack_trailer([(c, n) for c, _, n in self._entries], self.store.trailer_hash)
        if self.bulk:
            self._parts.append(trailer)
            self._blobs[self._name] = b"".join(self._parts)
            self._parts = []
        else:
            self._wait_closed()
            file, self._file = self._file, None
            self._closer = threading.Thread(target=self._close_pack, args=(file, trailer),
                                            name="aiofs-dedup-seal", daemon=True)
            self._closer.start()
        self.sealed[self._name] = self._entries
        self._name = None

    def _close_pack(self, file, trailer: bytes) -> None:
        """Write a pack's trailer and close it: durable (atomic) before any index names it."""
        try:
            with internal_access():  # a new thread: the context variable starts unset
                file.write(trailer)
                file.close()
        except BaseException as exc:  # re-raised by the writer's next seal or finish
            self._close_error = exc
            try:
                with internal_access():
                    discard = getattr(file, "discard", None)
                    if callable(discard):
                        discard()
            except Exception:
                pass

    def _wait_closed(self) -> None:
        """Wait for the pack closing in the background; raise what its close raised."""
        if self._closer is not None:
            self._closer.join()
            self._closer = None
        if self._close_error is not None:
            error, self._close_error = self._close_error, None
            raise error

    def finish(self) -> dict[str, list[tuple[bytes, int, int]]]:
        """Seal the open pack, write bulk packs; the packs written, all durable."""
        if self._name is not None:
            self._seal()
        self._wait_closed()
        if self._blobs:
            with internal_access():
                self.store.fs.makedirs(self.store.packs_dir, exist_ok=True)
                if len(self._blobs) == 1:
                    (name, blob), = self._blobs.items()
                    self.store.fs.pipe_file(name, blob)
                else:
                    self.store.fs.pipe(self._blobs)
            self._blobs = {}
        return self.sealed

    def abandon(self) -> None:
        """Drop the open pack (sealed ones stay: unreferenced data that ``gc`` removes)."""
        try:
            self._wait_closed()
        except BaseException:
            pass
        if self._file is not None:
            try:
                with internal_access():
                    discard = getattr(self._file, "discard", None)
                    if callable(discard):
                        discard()
                    else:
                        self._file.__exit__(RuntimeError, RuntimeError("abandoned"), None)
            except Exception:
                pass
        self._file = None
        self._name = None
        self._blobs = {}
        self._parts = []


def default_cache_path(cache_dir: str, identity: str) -> str:
    """Where the cache of the store on the target with ``identity`` lives."""
    digest = blake3.blake3(identity.encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"{digest}.sqlite3")
