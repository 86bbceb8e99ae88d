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
    """Cut a stream into chunks batch by batch, hashing as it goes (one writer, in order).

    :meth:`cut` takes the next pieces of the stream and returns ``(data, bounds, ids)``:
    the bytes of the complete chunks found so far, their ``(start, end)`` in ``data`` and
    their keyed ids. The whole-content blake3 is updated with every piece. Meant to run
    in a worker thread: FastCDC and blake3 release the GIL.
    """

    def __init__(self, config: StoreConfig):
        self._cdc = make_chunker(config)
        self._key = config.chunk_key
        self._max = config.max_size
        self._carry = b""
        self.whole = blake3.blake3()

    def cut(self, pieces: list, final: bool) -> tuple[bytes, list[tuple[int, int]], list[bytes]]:
        for piece in pieces:
            self.whole.update(piece)
        data = b"".join([self._carry, *pieces]) if self._carry or len(pieces) != 1 else pieces[0]
        if not isinstance(data, bytes):
            data = bytes(data)
        bounds = [(c.offset, c.offset + c.length) for c in self._cdc.cut_buf(data)] if data else []
        if not final and bounds and bounds[-1][1] - bounds[-1][0] < self._max:
            start = bounds.pop()[0]  # cut by the batch's end, not by content: carry it over
            self._carry = data[start:]  # (data keeps those bytes; bounds stop before them)
        else:
            self._carry = b""
        return data, bounds, hash_chunks(self._key, data, bounds)


def hash_chunks(key: bytes, block: bytes, bounds: list[tuple[int, int]]) -> list[bytes]:
    """Keyed blake3 ids of the chunks of ``block`` (runs in a worker thread: no GIL held)."""
    view = memoryview(block)
    return [blake3.blake3(view[s:e], key=key).digest() for s, e in bounds]


def content_hash(data) -> str:
    """The (unkeyed) blake3 hex digest of a whole file, as manifests record it."""
    return blake3.blake3(data).hexdigest()
