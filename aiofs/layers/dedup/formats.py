"""The persisted formats of the Dedup layer: store config, packs, index files, manifests.

Every format starts with a magic string and a version number (``docs/formats/dedup.md``
has the bytes and a worked example). Packs and index files are immutable once written;
a manifest is rewritten only as a whole (a new file version).

* **Config** (``.aiofs/dedup/config``): JSON ``{"format": "aiofs-dedup-config",
  "version": 1, "store_id", "chunker": {"min_size", "avg_size", "max_size", "seed"},
  "chunk_key"}``. Written once, exclusively; every writer chunks and hashes with it.
* **Pack** (``.aiofs/dedup/packs/<pack id>``): ``AIOFSPK1`` + chunk blobs (raw; the layer
  below compresses or encrypts them) + a trailer that lists every chunk it holds, so the
  index can be rebuilt from packs alone. The trailer ends with a fixed footer.
* **Index file** (``.aiofs/dedup/index/<writer id>-<n>``): ``AIOFSIX1`` + JSON listing
  packs and their chunks ``[id, offset, length]``; immutable and named per writer.
* **Manifest** (at the user file's own path): one JSON object whose first key says what it
  is: ``{"aiofs": "dedup-manifest", "version": 1, "size", "blake3", "chunks": [[id,
  length], ...]}`` or, for a small file, ``"inline"`` (base64) instead of ``"chunks"``.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import itertools
import json
import secrets
import struct
from collections.abc import Iterable

CONFIG_FORMAT = "aiofs-dedup-config"
CONFIG_VERSION = 1
MANIFEST_KIND = "dedup-manifest"
MANIFEST_VERSION = 1
MANIFEST_PREFIX = b'{"aiofs":"dedup-manifest"'

PACK_MAGIC = b"AIOFSPK1"
PACK_FOOTER_MAGIC = b"AIOFSPKT"
# footer: entry count u32, trailer length u32 (entries only), blake3 of the entries (32 B), magic
PACK_FOOTER = struct.Struct(">II32s8s")
PACK_ENTRY = struct.Struct(">32sI")  # chunk id, length (offsets follow from the order)

INDEX_MAGIC = b"AIOFSIX1"

ID_BYTES = 32


class FormatError(ValueError):
    """A persisted object does not parse or does not verify."""


# -- config ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """What every writer of one store must agree on: chunking parameters and the keys."""

    store_id: str
    min_size: int
    avg_size: int
    max_size: int
    seed: int
    chunk_key: bytes

    @classmethod
    def new(cls, min_size: int, avg_size: int, max_size: int) -> StoreConfig:
        """A fresh config with a random gear seed and chunk-id key (restic issue 5291)."""
        return cls(store_id=secrets.token_hex(16), min_size=min_size, avg_size=avg_size,
                   max_size=max_size, seed=secrets.randbits(63) or 1,
                   chunk_key=secrets.token_bytes(32))

    def encode(self) -> bytes:
        return json.dumps({
            "format": CONFIG_FORMAT, "version": CONFIG_VERSION, "store_id": self.store_id,
            "chunker": {"min_size": self.min_size, "avg_size": self.avg_size,
                        "max_size": self.max_size, "seed": self.seed},
            "chunk_key": self.chunk_key.hex(),
        }, indent=1).encode() + b"\n"

    @classmethod
    def decode(cls, blob: bytes) -> StoreConfig:
        try:
            data = json.loads(blob)
            if data.get("format") != CONFIG_FORMAT:
                raise FormatError("not an aiofs dedup config")
            if data.get("version") != CONFIG_VERSION:
                raise FormatError(f"unsupported dedup config version {data.get('version')!r}")
            chunker = data["chunker"]
            key = bytes.fromhex(data["chunk_key"])
            if len(key) != 32:
                raise FormatError("chunk key must be 32 bytes")
            return cls(store_id=str(data["store_id"]), min_size=int(chunker["min_size"]),
                       avg_size=int(chunker["avg_size"]), max_size=int(chunker["max_size"]),
                       seed=int(chunker["seed"]), chunk_key=key)
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"corrupt dedup config: {exc}") from None


# -- packs -----------------------------------------------------------------------------------


def pack_header() -> bytes:
    return PACK_MAGIC


def pack_trailer(entries: list[tuple[bytes, int]], hash_fn) -> bytes:
    """The trailer written after the chunk blobs: entries and a fixed footer."""
    body = b"".join(PACK_ENTRY.pack(cid, length) for cid, length in entries)
    return body + PACK_FOOTER.pack(len(entries), len(body), hash_fn(body), PACK_FOOTER_MAGIC)


def parse_pack_footer(footer: bytes) -> tuple[int, int, bytes]:
    """(entry count, entries length, entries hash) from the last bytes of a pack."""
    if len(footer) != PACK_FOOTER.size:
        raise FormatError("pack too short for its footer")
    count, length, digest, magic = PACK_FOOTER.unpack(footer)
    if magic != PACK_FOOTER_MAGIC or length != count * PACK_ENTRY.size:
        raise FormatError("bad pack footer")
    return count, length, digest


def parse_pack_entries(body: bytes, digest: bytes, hash_fn, stored: int) -> list[tuple[bytes, int, int]]:
    """Verified ``(chunk id, offset, length)`` of every chunk in a pack."""
    if hash_fn(body) != digest:
        raise FormatError("pack trailer does not match its hash")
    out, offset = [], len(PACK_MAGIC)
    for cid, length in PACK_ENTRY.iter_unpack(body):
        out.append((cid, offset, length))
        offset += length
    if offset != stored - len(body) - PACK_FOOTER.size:
        raise FormatError("pack trailer does not cover the pack's data")
    return out


# -- index files -----------------------------------------------------------------------------


def encode_index(packs: dict[str, list[tuple[bytes, int, int]]]) -> bytes:
    """An index file: for each pack, its chunks as ``[id hex, offset, length]``."""
    body = {"version": 1, "packs": {
        name: [[cid.hex(), offset, length] for cid, offset, length in chunks]
        for name, chunks in packs.items()}}
    return INDEX_MAGIC + json.dumps(body, separators=(",", ":")).encode()


def decode_index(blob: bytes) -> dict[str, list[tuple[bytes, int, int]]]:
    if not blob.startswith(INDEX_MAGIC):
        raise FormatError("not an aiofs dedup index file")
    try:
        body = json.loads(blob[len(INDEX_MAGIC):])
        if body.get("version") != 1:
            raise FormatError(f"unsupported index version {body.get('version')!r}")
        return {name: [(bytes.fromhex(c), int(o), int(n)) for c, o, n in chunks]
                for name, chunks in body["packs"].items()}
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"corrupt index file: {exc}") from None


# -- manifests -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One user file: its size, whole-content blake3, and chunks (or inline bytes)."""

    size: int
    blake3: str
    chunks: tuple[tuple[bytes, int], ...] = ()
    inline: bytes | None = None

    @functools.cached_property
    def offsets(self) -> list[int]:
        """Where each chunk starts in the file, and the file's size last (for bisecting)."""
        return [0, *itertools.accumulate(length for _, length in self.chunks)]

    def encode(self) -> bytes:
        head = f'{{"aiofs":"{MANIFEST_KIND}","version":{MANIFEST_VERSION},"size":{self.size},' \
               f'"blake3":"{self.blake3}",'
        if self.inline is not None:
            tail = '"inline":' + json.dumps(base64.b64encode(self.inline).decode()) + "}"
        else:
            tail = '"chunks":[' + ",".join(f'["{cid.hex()}",{n}]' for cid, n in self.chunks) + "]}"
        return (head + tail).encode()

    @classmethod
    def decode(cls, blob: bytes) -> Manifest:
        if not blob.startswith(MANIFEST_PREFIX):
            raise FormatError("not an aiofs dedup manifest")
        try:
            data = json.loads(blob)
            if data.get("version") != MANIFEST_VERSION:
                raise FormatError(f"unsupported manifest version {data.get('version')!r}")
            size = int(data["size"])
            digest = str(data["blake3"])
            if "inline" in data:
                inline = base64.b64decode(data["inline"], validate=True)
                if len(inline) != size:
                    raise FormatError("inline data does not match the manifest size")
                return cls(size=size, blake3=digest, inline=inline)
            chunks = tuple((bytes.fromhex(c), int(n)) for c, n in data["chunks"])
            if any(len(c) != ID_BYTES or n <= 0 for c, n in chunks) or \
                    sum(n for _, n in chunks) != size:
                raise FormatError("chunk list does not match the manifest size")
            return cls(size=size, blake3=digest, chunks=chunks)
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"corrupt manifest: {exc}") from None

    def chunk_ids(self) -> Iterable[bytes]:
        return (cid for cid, _ in self.chunks)


def looks_like_manifest(blob: bytes) -> bool:
    """True when ``blob`` starts like a manifest (used by ``gc``/``check`` scans)."""
    return blob.startswith(MANIFEST_PREFIX)
