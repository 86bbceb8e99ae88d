"""``CountingFileSystem``: a pass-through layer that counts the calls reaching its target.

Tests put it under the layer they check, to prove claims such as "a listing reads no
manifest", "a range read fetches only the covering chunks" or "a bulk write is one bulk
call": ``calls`` counts calls by name, ``bytes_read``/``reads`` what reads returned.
"""

from __future__ import annotations

import collections

from aiofs.layer import Layer

__all__ = ["CountingFileSystem"]


class CountingFileSystem(Layer):
    """Counts the calls (and the bytes read) that pass through it to the target."""

    def __init__(self, fs=None, **options):
        super().__init__(fs=fs, **options)
        self.calls: collections.Counter[str] = collections.Counter()
        self.bytes_read = 0
        self.reads: list[int] = []

    def reset(self) -> None:
        """Start counting again from zero."""
        self.calls.clear()
        self.bytes_read = 0
        self.reads = []

    def _got(self, data):
        self.bytes_read += len(data)
        self.reads.append(len(data))
        return data

    def ls(self, path, detail=True, **kwargs):
        self.calls["ls"] += 1
        return super().ls(path, detail=detail, **kwargs)

    def info(self, path, **kwargs):
        self.calls["info"] += 1
        return super().info(path, **kwargs)

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        self.calls["find"] += 1
        return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.calls["cat_file"] += 1
        return self._got(super().cat_file(path, start=start, end=end, **kwargs))

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        self.calls["cat_ranges"] += 1
        out = self.fs.cat_ranges(paths, starts, ends, on_error=on_error, **kwargs)
        for piece in out:
            if isinstance(piece, bytes):
                self._got(piece)
        return out

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        self.calls["cat"] += 1
        out = super().cat(path, recursive=recursive, on_error=on_error, **kwargs)
        for piece in (out.values() if isinstance(out, dict) else [out]):
            if isinstance(piece, bytes):
                self._got(piece)
        return out

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self.calls["pipe_file"] += 1
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def pipe(self, path, value=None, **kwargs):
        self.calls["pipe"] += 1
        return super().pipe(path, value, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        self.calls[f"open_{mode}"] += 1
        return super()._open(path, mode=mode, **kwargs)
