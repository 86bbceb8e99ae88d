"""Streaming content-defined chunking (FastCDC, keyed gear table) and chunk hashing.

A :class:`StreamChunker` turns any sequence of ``write`` calls into the same chunks as
chunking the whole content at once: FastCDC's cut points depend only on the bytes since
the chunk's start, so the last (possibly cut short) chunk of each batch is carried over
and chunked again with what follows.
"""

from __future__ import annotations

import blake3
from pyfastcdc.cy import FastCDC

from aiofs.layers.dedup.formats import StoreConfig


def make_chunker(config: StoreConfig) -> FastCDC:
    """A FastCDC chunker with the store's sizes and secret gear seed (not thread-safe)."""
    return FastCDC(avg_size=config.avg_size, min_size=config.min_size,
                   max_size=config.max_size, seed=config.seed)


class StreamChunker:
    """Feed bytes, get ``(block, [(start, end), ...])`` batches of complete chunks."""

    def __init__(self, config: StoreConfig, batch_size: int):
        self._cdc = make_chunker(config)
        self._max = config.max_size
        self.batch_size = max(batch_size, 4 * config.max_size)
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data) -> tuple[bytes, list[tuple[int, int]]] | None:
        """Add bytes; a batch of complete chunks once ``batch_size`` bytes are buffered."""
        self._buffer += data
        if len(self._buffer) < self.batch_size:
            return None
        return self._cut(final=False)

    def finish(self) -> tuple[bytes, list[tuple[int, int]]] | None:
        """The remaining chunks (the last one may be short)."""
        if not self._buffer:
            return None
        return self._cut(final=True)

    def _cut(self, final: bool) -> tuple[bytes, list[tuple[int, int]]] | None:
        bounds = [(c.offset, c.offset + c.length) for c in self._cdc.cut_buf(self._buffer)]
        if not final and bounds:
            last_start, last_end = bounds[-1]
            if last_end - last_start < self._max:  # cut by the buffer's end, not by content
                bounds.pop()
        if not bounds:
            return None
        end = bounds[-1][1]
        block = bytes(self._buffer[:end])
        del self._buffer[:end]
        return block, bounds


def hash_chunks(key: bytes, block: bytes, bounds: list[tuple[int, int]]) -> list[bytes]:
    """Keyed blake3 ids of the chunks of ``block`` (runs in a worker thread: no GIL held)."""
    view = memoryview(block)
    return [blake3.blake3(view[s:e], key=key).digest() for s, e in bounds]


def content_hash(data) -> str:
    """The (unkeyed) blake3 hex digest of a whole file, as manifests record it."""
    return blake3.blake3(data).hexdigest()
