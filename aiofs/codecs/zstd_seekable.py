"""The Compress layer's stored object formats, version 1 (``docs/formats/compress.md``).

Pure byte-level encoders and decoders: no fsspec, no paths, no threads. The layer
(:mod:`aiofs.layers.compress`) moves bytes and runs frame work in a thread pool; this
module decides what the bytes are. Every malformed input raises :class:`FormatError`,
which the layer reports as ``INTEGRITY_ERROR`` naming the path.

**zstd seekable** (the default) is the zstd seekable format (zstd ``contrib/seekable_format``,
what ``pyzstd.SeekableZstdFile`` reads and writes) with two skippable frames of our own::

    HEADER   skippable frame 0x184D2A5A, 32 bytes: "AIOFSZST", version, frame size
    FRAME 1  zstd frame (compressed, or raw blocks), Frame_Content_Size + content checksum
    ...
    FRAME n
    TRAILER  skippable frame 0x184D2A5B, 52 + 8n bytes: frame count, frame size, logical
             size, XXH64 of HEADER + SEEK TABLE, XXH64 of each stored frame, its own check
    SEEK TABLE  skippable frame 0x184D2A5E: one entry (compressed size, decompressed size,
             XXH64 low 32 bits of the content) per frame above, header and trailer included
             (as frames of 0 decompressed bytes), then the footer (count, 0x80, 0x8F92EAB1)

``zstd -d`` skips the skippable frames and restores the original; a reader of the seek table
maps a logical range to the frames it touches. Incompressible frames are stored as zstd frames
of raw blocks, built here without running the compressor.

**gzip** (compatibility) is one whole-stream gzip member followed by an empty gzip member
whose extra field holds the logical size: ``gzip -d`` restores the original, but a range read
has to inflate from the start (the format is not seekable).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyzstd
import xxhash

__all__ = [
    "FormatError", "EncodedFrame", "SeekTable", "SeekableEncoder", "GzipEncoder",
    "GzipTrailer", "encode_frame", "raw_frame", "encode_object", "decode_frame",
    "decode_object", "parse_object", "parse_tail", "tail_length", "detect_format",
    "parse_gzip_trailer", "gzip_decode", "gzip_decode_bytes", "gzip_encode", "decode_any",
    "window_log_max",
]

VERSION = 1

# -- zstd seekable ----------------------------------------------------------------------------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"              # 0xFD2FB528, little-endian
HEADER_MAGIC = 0x184D2A5A                     # skippable frame, nibble A: our header
TRAILER_MAGIC = 0x184D2A5B                    # skippable frame, nibble B: our trailer
SEEK_TABLE_MAGIC = 0x184D2A5E                 # skippable frame of the seek table (spec)
SEEKABLE_MAGIC = 0x8F92EAB1                   # last 4 bytes of the file (spec)
SEEKABLE_FOOTER = struct.pack("<I", SEEKABLE_MAGIC)
CHECKSUM_FLAG = 0x80                          # Seek_Table_Descriptor: entries carry checksums

HEADER_ID = b"AIOFSZST"
TRAILER_ID = b"AIOFSZTR"
HEADER_SIZE = 32                              # 8 (skippable header) + 24 payload
TRAILER_BASE = 52                             # 8 (skippable header) + 44 + 8 per frame
ENTRY_SIZE = 12
FOOTER_SIZE = 9

_HEADER = struct.Struct("<II8sBBHIII")        # magic, size, id, version, flags, 0, frame_size, 0, check
_TRAILER = struct.Struct("<II8sBBHIIQQ")      # magic, size, id, version, flags, 0, frames,
                                              # frame_size, logical, meta hash; then one
                                              # XXH64 per stored frame and the check (u64)
_ENTRY = struct.Struct("<III")
_FOOTER = struct.Struct("<IBI")
_SKIPPABLE = struct.Struct("<II")

MIN_FRAME_SIZE = 1 << 10
MAX_FRAME_SIZE = 64 << 20                     # `zstd -d` accepts windows up to 128 MiB
MAX_BLOCK = 128 << 10                         # zstd Block_Maximum_Size
MIN_OBJECT_SIZE = HEADER_SIZE + TRAILER_BASE + 8 + 2 * ENTRY_SIZE + FOOTER_SIZE
MASK32 = 0xFFFFFFFF


class FormatError(ValueError):
    """The bytes are not a valid object of this format (corrupt, truncated or foreign)."""


def xxh64_low32(data) -> int:
    """The seek-table and zstd content checksum: the low 32 bits of XXH64 (seed 0)."""
    return xxhash.xxh64_intdigest(data) & MASK32


xxh64 = xxhash.xxh64_intdigest


def trailer_size(frames: int) -> int:
    return TRAILER_BASE + 8 * frames


EMPTY_CHECKSUM = xxh64_low32(b"")


def window_log_max(frame_size: int) -> int:
    """The largest zstd window (log2) a decoder accepts for frames of ``frame_size`` bytes."""
    return min(max(10, (max(frame_size, 2) - 1).bit_length()) + 1, 31)


def check_frame_size(frame_size: int) -> int:
    if not isinstance(frame_size, int) or not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE:
        raise FormatError(
            f"frame size must be an integer from {MIN_FRAME_SIZE} to {MAX_FRAME_SIZE}, "
            f"not {frame_size!r}")
    return frame_size


# -- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedFrame:
    """One data frame ready to store: its bytes, content size, content checksum (XXH64 low
    32 bits, for the seek table) and digest (XXH64 of the stored bytes, for the trailer)."""

    data: bytes
    size: int
    checksum: int
    digest: int
    raw: bool


def raw_frame(data, checksum: int | None = None) -> bytes:
    """A zstd frame holding ``data`` in raw blocks (no compression work, ~0.003% overhead).

    Frame header: magic, descriptor 0xA4 (4-byte Frame_Content_Size, single segment,
    content checksum), the size; then blocks of at most 128 KiB, each a 3-byte header
    ``size << 3 | type 0 (raw) << 1 | last``; then the checksum.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size > MASK32:
        raise FormatError("a raw frame holds at most 4 GiB")
    if checksum is None:
        checksum = xxh64_low32(view)
    parts: list = [ZSTD_MAGIC, b"\xa4", size.to_bytes(4, "little")]
    if size == 0:
        parts.append(b"\x01\x00\x00")
    for offset in range(0, size, MAX_BLOCK):
        length = min(MAX_BLOCK, size - offset)
        last = 1 if offset + length >= size else 0
        parts.append(((length << 3) | last).to_bytes(3, "little"))
        parts.append(view[offset : offset + length])
    parts.append(checksum.to_bytes(4, "little"))
    return b"".join(parts)


def compression_options(level: int) -> dict:
    return {
        pyzstd.CParameter.compressionLevel: level,
        pyzstd.CParameter.checksumFlag: 1,
        pyzstd.CParameter.contentSizeFlag: 1,
    }


def encode_frame(data, level: int = 3, min_saving: float = 0.03, compress: bool = True) -> EncodedFrame:
    """Encode one frame: compressed if that saves at least ``min_saving``, else raw.

    The decision is made on the whole frame by compressing it (zstd gives up on
    incompressible input at ~2 GB/s, so random, JPEG or MP4 frames cost little), never on a
    sample. ``compress=False`` stores raw (files under the compression threshold).
    """
    size = len(data)
    if compress and size:
        packed = pyzstd.compress(data, compression_options(level))
        if len(packed) <= size * (1.0 - min_saving):
            # zstd's content checksum is the same low 32 bits of XXH64 the seek table uses
            checksum = int.from_bytes(packed[-4:], "little")
            return EncodedFrame(packed, size, checksum, xxh64(packed), False)
    checksum = xxh64_low32(data)
    frame = raw_frame(data, checksum)
    return EncodedFrame(frame, size, checksum, xxh64(frame), True)


def decode_frame(frame, size: int, checksum: int, digest: int, max_window_log: int = 27) -> bytes:
    """Decompress one stored data frame, which must hold exactly ``size`` bytes.

    The stored bytes must match ``digest`` (XXH64, from the trailer) before any work;
    output is bounded by ``size`` (no decompression bombs), the frame must end exactly at
    the end of ``frame``, and the content must match ``checksum`` (XXH64 low 32 bits).
    """
    if xxh64(frame) != digest:
        raise FormatError("stored frame does not match its digest (corrupt or replaced)")
    if len(frame) < 4 or bytes(frame[:4]) != ZSTD_MAGIC:
        raise FormatError("bad zstd frame magic")
    decoder = pyzstd.ZstdDecompressor(option={pyzstd.DParameter.windowLogMax: max_window_log})
    try:
        out = decoder.decompress(frame, max_length=size)
        if not decoder.eof:
            extra = decoder.decompress(b"", max_length=1)
            if extra:
                raise FormatError(f"frame holds more than its declared {size} bytes")
            if not decoder.eof:
                raise FormatError("frame is truncated")
    except pyzstd.ZstdError as exc:
        raise FormatError(f"corrupt zstd frame: {exc}") from None
    except EOFError as exc:  # pragma: no cover - defensive: decoder already finished
        raise FormatError(f"corrupt zstd frame: {exc}") from None
    if decoder.unused_data:
        raise FormatError("bytes after the end of a frame")
    if len(out) != size:
        raise FormatError(f"frame holds {len(out)} bytes, the seek table says {size}")
    if xxh64_low32(out) != checksum:
        raise FormatError("frame content does not match its seek table checksum")
    return out


# -- header, trailer, seek table -----------------------------------------------------------------


def header_frame(frame_size: int) -> bytes:
    """The leading skippable frame: magic string, version and nominal frame size."""
    check_frame_size(frame_size)
    body = _HEADER.pack(HEADER_MAGIC, HEADER_SIZE - 8, HEADER_ID, VERSION, 0, 0, frame_size, 0, 0)
    check = xxh64_low32(body[8:-4])
    return body[:-4] + check.to_bytes(4, "little")


def parse_header(header) -> int:
    """Check the leading skippable frame; return the nominal frame size."""
    if len(header) < HEADER_SIZE:
        raise FormatError("object is shorter than its header")
    magic, size, ident, version, flags, reserved, frame_size, reserved2, check = \
        _HEADER.unpack_from(header, 0)
    if magic != HEADER_MAGIC or size != HEADER_SIZE - 8 or ident != HEADER_ID:
        raise FormatError("not an aiofs-compress object (bad header magic)")
    if version != VERSION:
        raise FormatError(f"unsupported aiofs-compress format version {version}")
    if check != xxh64_low32(bytes(header[8 : HEADER_SIZE - 4])):
        raise FormatError("header checksum mismatch")
    if flags or reserved or reserved2:
        raise FormatError("reserved header bits are set")
    try:
        return check_frame_size(frame_size)
    except FormatError as exc:
        raise FormatError(f"bad header: {exc}") from None


def tail_length(n_entries: int) -> int:
    """Bytes at the end of an object holding the trailer and a seek table of ``n_entries``."""
    return trailer_size(n_entries - 2) + 8 + ENTRY_SIZE * n_entries + FOOTER_SIZE


def footer_entries(tail, stored_size: int) -> int:
    """Read the footer (last 9 bytes of ``tail``): the number of seek table entries."""
    if stored_size < MIN_OBJECT_SIZE or len(tail) < FOOTER_SIZE:
        raise FormatError(f"object of {stored_size} bytes is truncated (no room for a seek table)")
    n_entries, descriptor, magic = _FOOTER.unpack_from(tail, len(tail) - FOOTER_SIZE)
    if magic != SEEKABLE_MAGIC:
        raise FormatError("no seek table footer: truncated, or not an aiofs-compress object")
    if descriptor != CHECKSUM_FLAG:
        raise FormatError(f"unexpected seek table descriptor 0x{descriptor:02x}")
    if n_entries < 2 or tail_length(n_entries) + HEADER_SIZE > stored_size:
        raise FormatError(f"seek table of {n_entries} entries does not fit the object")
    return n_entries


def _native_u32(raw: bytes) -> array:
    values = array("I")
    values.frombytes(raw)
    if _BIG_ENDIAN:  # pragma: no cover - every supported platform is little-endian
        values.byteswap()
    return values


_BIG_ENDIAN = array("I", [1]).tobytes() != struct.pack("<I", 1)


class SeekTable:
    """A parsed, verified seek table: where each data frame is, stored and logically.

    ``offsets[i]``/``offsets[i+1]``: stored byte range of data frame ``i``;
    ``starts[i]``/``starts[i+1]``: its logical byte range; ``checksums[i]``: XXH64 low 32
    bits of its content; ``digests[i]``: XXH64 of its stored bytes. ``header_verified``
    says whether the header's bytes were checked against the trailer's hash (always done
    before a data read).
    """

    __slots__ = ("frame_size", "logical_size", "stored_size", "starts", "offsets",
                 "checksums", "digests", "meta_hash", "table_bytes", "header_verified")

    def __init__(self, frame_size, logical_size, stored_size, starts, offsets, checksums,
                 digests, meta_hash, table_bytes):
        self.frame_size = frame_size
        self.logical_size = logical_size
        self.stored_size = stored_size
        self.starts = starts
        self.offsets = offsets
        self.checksums = checksums
        self.digests = digests
        self.meta_hash = meta_hash
        self.table_bytes = table_bytes
        self.header_verified = False

    @property
    def frames(self) -> int:
        return len(self.checksums)

    @property
    def max_stored_frame(self) -> int:
        return max((self.offsets[i + 1] - self.offsets[i] for i in range(self.frames)), default=0)

    def verify_header(self, header) -> None:
        """Check the header bytes against the trailer's hash and the frame size."""
        frame_size = parse_header(header)
        if frame_size != self.frame_size:
            raise FormatError("header and trailer disagree on the frame size")
        if xxh64(bytes(header[:HEADER_SIZE]) + self.table_bytes) != self.meta_hash:
            raise FormatError("header or seek table does not match the trailer's hash")
        self.header_verified = True

    def frame_range(self, start: int, end: int) -> tuple[int, int]:
        """Data frames ``[first, last)`` holding logical bytes ``[start, end)`` (0 <= start < end)."""
        first = bisect_right(self.starts, start) - 1
        last = bisect_left(self.starts, end)
        return max(first, 0), min(last, self.frames)

    def frame_info(self, i: int) -> tuple[int, int, int, int, int]:
        """``(stored offset, stored length, logical size, checksum, digest)`` of frame ``i``."""
        return (self.offsets[i], self.offsets[i + 1] - self.offsets[i],
                self.starts[i + 1] - self.starts[i], self.checksums[i], self.digests[i])


def parse_tail(tail, stored_size: int) -> SeekTable:
    """Parse and check the trailer and seek table from the last bytes of an object.

    ``tail`` must hold at least :func:`tail_length` bytes (the whole object is fine).
    Everything but the header is verified here: structure, sums, the trailer's own check.
    """
    tail = memoryview(tail).cast("B")
    n_entries = footer_entries(tail, stored_size)
    n_frames = n_entries - 2
    table_size = 8 + ENTRY_SIZE * n_entries + FOOTER_SIZE
    t_size = trailer_size(n_frames)
    need = t_size + table_size
    if len(tail) < need:
        raise FormatError(f"need the last {need} bytes to read the seek table")  # caller bug
    table = tail[len(tail) - table_size :]
    magic, content = _SKIPPABLE.unpack_from(table, 0)
    if magic != SEEK_TABLE_MAGIC or content != table_size - 8:
        raise FormatError("bad seek table frame header")
    entries = _native_u32(bytes(table[8 : 8 + ENTRY_SIZE * n_entries]))
    if tuple(entries[0:3]) != (HEADER_SIZE, 0, EMPTY_CHECKSUM):
        raise FormatError("first seek table entry is not the header")
    if tuple(entries[-3:]) != (t_size, 0, EMPTY_CHECKSUM):
        raise FormatError("last seek table entry is not the trailer")
    trailer = tail[len(tail) - need : len(tail) - table_size]
    (t_magic, t_content, ident, version, flags, reserved, frames, frame_size, logical,
     meta_hash) = _TRAILER.unpack_from(trailer, 0)
    if t_magic != TRAILER_MAGIC or t_content != t_size - 8 or ident != TRAILER_ID:
        raise FormatError("bad trailer frame")
    if version != VERSION:
        raise FormatError(f"unsupported aiofs-compress format version {version}")
    (check,) = struct.unpack_from("<Q", trailer, t_size - 8)
    if check != xxh64(trailer[8 : t_size - 8]):
        raise FormatError("trailer checksum mismatch")
    if flags or reserved:
        raise FormatError("reserved trailer bits are set")
    try:
        check_frame_size(frame_size)
    except FormatError as exc:
        raise FormatError(f"bad trailer: {exc}") from None
    if frames != n_frames:
        raise FormatError("trailer and seek table disagree on the number of frames")
    digests = array("Q")
    digests.frombytes(bytes(trailer[_TRAILER.size : _TRAILER.size + 8 * n_frames]))
    if _BIG_ENDIAN:  # pragma: no cover
        digests.byteswap()
    starts = array("q", [0])
    offsets = array("q", [HEADER_SIZE])
    checksums = array("I")
    position, total = HEADER_SIZE, 0
    for i in range(1, n_entries - 1):
        c_size, d_size, checksum = entries[3 * i], entries[3 * i + 1], entries[3 * i + 2]
        if c_size < 8 or not 1 <= d_size <= frame_size:
            raise FormatError(f"seek table entry {i} is out of bounds")
        position += c_size
        total += d_size
        offsets.append(position)
        starts.append(total)
        checksums.append(checksum)
    if position + need != stored_size:
        raise FormatError(
            f"frames add up to {position + need} bytes, the object has {stored_size}: "
            f"truncated or corrupt")
    if total != logical:
        raise FormatError("trailer and seek table disagree on the logical size")
    return SeekTable(frame_size, logical, stored_size, starts, offsets, checksums, digests,
                     meta_hash, bytes(table))


def parse_object(blob) -> SeekTable:
    """Parse and fully verify the metadata of a whole stored object (header included)."""
    blob = memoryview(blob).cast("B")
    size = len(blob)
    if size < MIN_OBJECT_SIZE:
        raise FormatError(f"object of {size} bytes is truncated")
    table = parse_tail(blob, size)
    table.verify_header(blob[:HEADER_SIZE])
    return table


def decode_object(blob, map_: Callable = map) -> bytes:
    """The original bytes of a whole stored object (``map_`` may run frames in parallel)."""
    table = parse_object(blob)
    view = memoryview(blob).cast("B")
    window = window_log_max(table.frame_size)

    def one(i):
        offset, length, size, checksum, digest = table.frame_info(i)
        return decode_frame(view[offset : offset + length], size, checksum, digest, window)

    return b"".join(map_(one, range(table.frames)))


class SeekableEncoder:
    """Writer-side state: the header, one seek table entry per frame, then the tail.

    ``header()`` first, then ``add(frame)`` for each :class:`EncodedFrame` in order, then
    ``finish()``; each returns the bytes to append to the stored object.
    """

    def __init__(self, frame_size: int):
        self.frame_size = check_frame_size(frame_size)
        self._header = header_frame(frame_size)
        self._entries = array("I", [HEADER_SIZE, 0, EMPTY_CHECKSUM])
        self._digests = array("Q")
        self.logical_size = 0
        self.stored_size = 0
        self.frames = 0
        self.raw_frames = 0
        self.max_stored_frame = 0

    def header(self) -> bytes:
        self.stored_size += HEADER_SIZE
        return self._header

    def add(self, frame: EncodedFrame) -> bytes:
        if not 1 <= frame.size <= self.frame_size:
            raise FormatError(f"a frame must hold 1 to {self.frame_size} bytes, not {frame.size}")
        self._entries.extend((len(frame.data), frame.size, frame.checksum))
        self._digests.append(frame.digest)
        self.logical_size += frame.size
        self.stored_size += len(frame.data)
        self.max_stored_frame = max(self.max_stored_frame, len(frame.data))
        self.frames += 1
        self.raw_frames += frame.raw
        return frame.data

    def finish(self) -> bytes:
        t_size = trailer_size(self.frames)
        entries = array("I", self._entries)
        entries.extend((t_size, 0, EMPTY_CHECKSUM))
        digests = array("Q", self._digests)
        if _BIG_ENDIAN:  # pragma: no cover
            entries.byteswap()
            digests.byteswap()
        n_entries = self.frames + 2
        table = b"".join((
            _SKIPPABLE.pack(SEEK_TABLE_MAGIC, ENTRY_SIZE * n_entries + FOOTER_SIZE),
            entries.tobytes(),
            _FOOTER.pack(n_entries, CHECKSUM_FLAG, SEEKABLE_MAGIC),
        ))
        meta_hash = xxh64(self._header + table)
        body = _TRAILER.pack(TRAILER_MAGIC, t_size - 8, TRAILER_ID, VERSION, 0, 0,
                             self.frames, self.frame_size, self.logical_size, meta_hash)
        body += digests.tobytes()
        trailer = body + struct.pack("<Q", xxh64(body[8:]))
        assert len(trailer) == t_size
        self.stored_size += len(trailer) + len(table)
        return trailer + table


def split_frames(data, frame_size: int) -> Iterator[memoryview]:
    view = memoryview(data).cast("B")
    for offset in range(0, len(view), frame_size):
        yield view[offset : offset + frame_size]


def encode_object(data, frame_size: int = 1 << 20, level: int = 3, threshold: int = 1024,
                  min_saving: float = 0.03, map_: Callable = map) -> bytes:
    """A whole stored object for ``data`` (``map_`` may encode frames in parallel)."""
    encoder = SeekableEncoder(frame_size)
    compress = len(data) >= threshold

    def one(chunk):
        return encode_frame(chunk, level, min_saving, compress)

    parts = [encoder.header()]
    parts.extend(encoder.add(frame) for frame in map_(one, split_frames(data, frame_size)))
    parts.append(encoder.finish())
    return b"".join(parts)


# -- gzip ----------------------------------------------------------------------------------------

GZIP_ID = b"AIOFSGZ"                          # + version byte: the first member's extra field
GZIP_TRAILER_ID = b"AIOFSGZT"
GZIP_FLAGS = 0x06                             # FEXTRA | FHCRC
GZIP_HEADER_SIZE = 26
GZIP_TRAILER_SIZE = 60
_GZIP_FIXED = b"\x1f\x8b\x08\x06\x00\x00\x00\x00\x00\xff"   # magic, deflate, flags, mtime 0, xfl, OS
_GZIP_TRAILER_DATA = struct.Struct("<8sB3xQIQ")   # id, version, logical size, CRC-32, XXH64 of deflate
_GZIP_TRAILER_EXTRA = b"\x24\x00AZ\x20\x00"      # XLEN 36, subfield 'AZ' of 32 bytes
EMPTY_DEFLATE = b"\x03\x00"


def _with_hcrc(header: bytes) -> bytes:
    return header + (zlib.crc32(header) & 0xFFFF).to_bytes(2, "little")


def gzip_header() -> bytes:
    """The first member's header: FEXTRA subfield 'AZ' = b"AIOFSGZ" + version, FHCRC."""
    extra = b"AZ" + (8).to_bytes(2, "little") + GZIP_ID + bytes([VERSION])
    return _with_hcrc(_GZIP_FIXED + len(extra).to_bytes(2, "little") + extra)


def gzip_trailer(logical_size: int, crc: int, digest: int) -> bytes:
    """The closing empty member: its extra field holds the logical size, the CRC-32 of the
    content and the XXH64 of the first member's deflate bytes."""
    data = _GZIP_TRAILER_DATA.pack(GZIP_TRAILER_ID, VERSION, logical_size, crc, digest)
    extra = b"AZ" + len(data).to_bytes(2, "little") + data
    header = _with_hcrc(_GZIP_FIXED + len(extra).to_bytes(2, "little") + extra)
    return header + EMPTY_DEFLATE + bytes(8)


@dataclass(frozen=True)
class GzipTrailer:
    logical_size: int
    crc: int
    digest: int
    raw: bytes


def parse_gzip_trailer(tail, stored_size: int) -> GzipTrailer:
    """Check the closing member (the last 60 bytes); return what it declares."""
    if stored_size < GZIP_HEADER_SIZE + 2 + 8 + GZIP_TRAILER_SIZE or len(tail) < GZIP_TRAILER_SIZE:
        raise FormatError(f"gzip object of {stored_size} bytes is truncated")
    raw = bytes(tail[len(tail) - GZIP_TRAILER_SIZE :])
    if raw[:10] != _GZIP_FIXED or raw[10:16] != _GZIP_TRAILER_EXTRA:
        raise FormatError("no aiofs gzip trailer member: truncated, or not an aiofs-compress object")
    if int.from_bytes(raw[48:50], "little") != zlib.crc32(raw[:48]) & 0xFFFF:
        raise FormatError("gzip trailer header CRC mismatch")
    ident, version, logical, crc, digest = _GZIP_TRAILER_DATA.unpack_from(raw, 16)
    if ident != GZIP_TRAILER_ID:
        raise FormatError("bad gzip trailer member")
    if version != VERSION:
        raise FormatError(f"unsupported aiofs-compress format version {version}")
    if raw[50:] != EMPTY_DEFLATE + bytes(8):
        raise FormatError("gzip trailer member is not empty")
    return GzipTrailer(logical, crc, digest, raw)


def detect_format(tail) -> str:
    """``"zstd"`` or ``"gzip"`` from the last bytes of an object; :class:`FormatError` else."""
    tail = bytes(tail[-GZIP_TRAILER_SIZE:])
    if tail.endswith(SEEKABLE_FOOTER):
        return "zstd"
    if tail[:10] == _GZIP_FIXED and tail[10:16] == _GZIP_TRAILER_EXTRA:
        return "gzip"
    raise FormatError("not an aiofs-compress object, or truncated (no footer)")


class GzipEncoder:
    """Whole-stream gzip writer: ``header()``, ``compress(data)``..., ``finish()``."""

    def __init__(self, level: int = 6):
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
        self._digest = xxhash.xxh64()
        self._crc = 0
        self.logical_size = 0
        self.stored_size = 0

    def header(self) -> bytes:
        self.stored_size += GZIP_HEADER_SIZE
        return gzip_header()

    def compress(self, data) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self.logical_size += len(data)
        out = self._deflate.compress(data)
        self._digest.update(out)
        self.stored_size += len(out)
        return out

    def finish(self) -> bytes:
        last = self._deflate.flush()
        self._digest.update(last)
        out = last + struct.pack("<II", self._crc, self.logical_size & MASK32)
        out += gzip_trailer(self.logical_size, self._crc, self._digest.intdigest())
        self.stored_size += len(out)
        return out


def gzip_encode(data, level: int = 6) -> bytes:
    encoder = GzipEncoder(level)
    return encoder.header() + encoder.compress(data) + encoder.finish()


def gzip_decode(read: Callable[[int], bytes], stored_size: int, trailer: GzipTrailer,
                chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Inflate a stored gzip object read sequentially from its start with ``read(n)``.

    Yields the original bytes in pieces of at most ``chunk_size``; the final checks (CRC-32,
    size, exact end of stream, trailer member) run after the last piece, so a consumer
    must exhaust the iterator before trusting what it got. Output is bounded by the size
    the trailer declares.
    """
    def read_exact(n: int) -> bytes:
        data = read(n)
        if len(data) != n:
            raise FormatError("gzip object is truncated")
        return data

    if read_exact(GZIP_HEADER_SIZE) != gzip_header():
        raise FormatError("bad gzip header (magic, flags, extra field or header CRC)")
    remaining = stored_size - GZIP_HEADER_SIZE - 8 - GZIP_TRAILER_SIZE
    if remaining < 2:
        raise FormatError("gzip object is truncated")
    inflate = zlib.decompressobj(-15)
    digest = xxhash.xxh64()
    limit = trailer.logical_size
    total = crc = 0
    try:
        while remaining:
            data = read_exact(min(chunk_size, remaining))
            remaining -= len(data)
            digest.update(data)
            while data:
                if inflate.eof:
                    raise FormatError("data after the end of the deflate stream")
                out = inflate.decompress(data, min(chunk_size, limit - total + 1))
                data = inflate.unconsumed_tail
                if out:
                    total += len(out)
                    if total > limit:
                        raise FormatError("gzip stream holds more than its declared size")
                    crc = zlib.crc32(out, crc)
                    yield out
        while not inflate.eof:  # buffered output past the last input byte
            out = inflate.decompress(b"", min(chunk_size, limit - total + 1))
            if not out:
                raise FormatError("gzip deflate stream is truncated")
            total += len(out)
            if total > limit:
                raise FormatError("gzip stream holds more than its declared size")
            crc = zlib.crc32(out, crc)
            yield out
    except zlib.error as exc:
        raise FormatError(f"corrupt gzip data: {exc}") from None
    if inflate.unused_data or inflate.unconsumed_tail:
        raise FormatError("data after the end of the deflate stream")
    if digest.intdigest() != trailer.digest:
        raise FormatError("stored deflate bytes do not match their digest")
    stored_crc, isize = struct.unpack("<II", read_exact(8))
    if stored_crc != crc or isize != total & MASK32:
        raise FormatError("gzip CRC-32 or size mismatch")
    if total != trailer.logical_size or crc != trailer.crc:
        raise FormatError("gzip trailer member disagrees with the stream")
    if read_exact(GZIP_TRAILER_SIZE) != trailer.raw:
        raise FormatError("gzip trailer member changed while reading")


def gzip_decode_bytes(blob) -> bytes:
    """The original bytes of a whole stored gzip object."""
    view = memoryview(blob).cast("B")
    trailer = parse_gzip_trailer(view, len(view))
    position = 0

    def read(n):
        nonlocal position
        piece = view[position : position + n]
        position += len(piece)
        return bytes(piece)

    return b"".join(gzip_decode(read, len(view), trailer))


def decode_any(blob, map_: Callable = map) -> bytes:
    """The original bytes of a whole stored object of either format."""
    fmt = detect_format(blob) if len(blob) >= 4 else None
    if fmt is None:
        raise FormatError(f"object of {len(blob)} bytes is truncated")
    return decode_object(blob, map_) if fmt == "zstd" else gzip_decode_bytes(blob)
