"""Drive file objects: buffered range reads, and whole-file atomic writes.

Contract:

* :class:`DriveReadFile` is fsspec's ``AbstractBufferedFile`` reading with ``Range``
  requests (``_fetch_range``): a seek costs nothing, a read fetches only what the cache
  needs.
* :class:`DriveWriteFile` spools what is written (memory up to 16 MiB, then a temporary
  file) and uploads on ``close`` (multipart, or resumable in 256 KiB-multiple chunks that
  can be resumed and restarted because the spool keeps every byte). Leaving a ``with`` block
  through an exception, or :meth:`DriveWriteFile.discard`, uploads nothing: a Drive file is
  either its old content or its new content, never half of one.
"""

from __future__ import annotations

import io
import tempfile

from fsspec.asyn import sync
from fsspec.spec import AbstractBufferedFile

from aiofs.layer import WriteOnlyFile

SPOOL_IN_MEMORY = 16 * 1024 * 1024


class DriveReadFile(AbstractBufferedFile):
    """A Drive file opened for reading; every cache miss is one ranged download."""

    def _fetch_range(self, start, end):
        if start >= end:
            return b""
        return self.fs.cat_file(self.path, start=start, end=end)


class DriveWriteFile(WriteOnlyFile, io.BufferedIOBase):
    """A Drive file being written: uploaded whole on ``close``, dropped on ``discard``."""

    SEEKABLE = True

    def __init__(self, fs, rel: str, mode: str, initial: bytes | None = None):
        super().__init__()
        self.fs = fs
        self.rel = rel
        self.path = "/" + rel
        self.mode = mode
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        if initial:
            self._spool.write(initial)
        self._done = False

    def write(self, data) -> int:
        """Append to the spool (nothing goes to Drive yet)."""
        if self._done:
            raise ValueError("I/O operation on closed file")
        return self._spool.write(data)

    def tell(self) -> int:
        """Position in the spool."""
        return self._spool.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move in the spool."""
        return self._spool.seek(offset, whence)

    def flush(self) -> None:
        """No-op: the upload happens whole on :meth:`close`."""
        pass  # nothing reaches Drive before close: a half file must never be visible

    def close(self) -> None:
        """Upload the whole content (a new file, or a new revision of the existing one)."""
        if self._done:
            return
        self._done = True
        try:
            size = self._spool.seek(0, 2)
            self._spool.seek(0)
            sync(self.fs.loop, self.fs._write, self.rel, self._spool, size, "x" in self.mode)
        finally:
            self._spool.close()
            super().close()

    def discard(self) -> None:
        """Abandon the write: Drive keeps the old content (or no file)."""
        if self._done:
            return
        self._done = True
        self._spool.close()
        super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()
