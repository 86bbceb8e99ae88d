"""Local data files of the offline layer: one immutable blob per version of a file.

Blobs live in ``CACHE_DIR/blobs/XY/NAME`` (``NAME`` random hex, ``XY`` its first two
characters). A new version is written to ``CACHE_DIR/tmp/``, fsynced, renamed into
``blobs/`` and the directory fsynced, all before the journal commit that references it, so a
committed journal entry always finds its data. A blob is never modified after that, except
the sparse blobs of partially cached files, whose blocks are filled in as they are fetched
(and listed in the ``blocks`` table only once written). Blobs no row references (a process
killed between the rename and the commit) are deleted by :meth:`Store.sweep`.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """The blob directory of one cache directory."""

    def __init__(self, root: str):
        self.root = root
        self.blobs = os.path.join(root, "blobs")
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.blobs, exist_ok=True)
        os.makedirs(self.tmp, exist_ok=True)

    @staticmethod
    def new_name() -> str:
        """A fresh blob name."""
        return uuid.uuid4().hex

    def path(self, name: str) -> str:
        """The file of blob ``name``."""
        return os.path.join(self.blobs, name[:2], name)

    def temp(self) -> tuple[str, io.BufferedWriter]:
        """A new temporary file for writing: ``(path, file)``."""
        path = os.path.join(self.tmp, f"{uuid.uuid4().hex}.part")
        return path, open(path, "wb")

    def publish(self, temp_path: str, f=None, durable: bool = True) -> str:
        """Flush/fsync a temp file and rename it into ``blobs/``; returns the blob name."""
        if f is not None:
            f.flush()
            if durable:
                os.fsync(f.fileno())
            f.close()
        elif durable:
            fd = os.open(temp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        name = self.new_name()
        final = self.path(name)
        directory = os.path.dirname(final)
        try:
            os.rename(temp_path, final)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            os.rename(temp_path, final)
        if durable:
            _fsync_dir(directory)
        return name

    def write(self, data, durable: bool = True) -> str:
        """Store ``data`` as a new blob; returns its name."""
        temp, f = self.temp()
        try:
            f.write(data)
        except BaseException:
            f.close()
            self.drop_temp(temp)
            raise
        return self.publish(temp, f, durable=durable)

    def sparse(self, size: int) -> str:
        """A new sparse blob of ``size`` bytes (for a partially cached file)."""
        name = self.new_name()
        final = self.path(name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        with open(final, "wb") as f:
            f.truncate(size)
        return name

    def write_at(self, name: str, offset: int, data: bytes) -> None:
        """Fill a range of a sparse blob."""
        with open(self.path(name), "r+b") as f:
            f.seek(offset)
            f.write(data)

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of a blob."""
        with open(self.path(name), "rb") as f:
            if start:
                f.seek(start)
            return f.read() if end is None else f.read(max(0, end - start))

    def size(self, name: str) -> int | None:
        """The blob's size on disk, ``None`` if it is gone."""
        try:
            return os.stat(self.path(name)).st_size
        except FileNotFoundError:
            return None

    def remove(self, names) -> None:
        """Delete blobs (missing ones are fine)."""
        for name in names:
            if name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(name))

    @staticmethod
    def drop_temp(path: str) -> None:
        """Delete a temp file (gone already is fine)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def sweep(self, referenced, min_age: float = 3600.0) -> int:
        """Delete blobs and temps older than ``min_age`` seconds that nothing references.

        The age guard leaves alone what another process has just written and is about to
        commit.
        """
        cutoff = time.time() - min_age
        removed = 0
        for directory, _, names in os.walk(self.root):
            if directory != self.tmp and not directory.startswith(self.blobs):
                continue
            for name in names:
                full = os.path.join(directory, name)
                if directory != self.tmp and name in referenced:
                    continue
                try:
                    if os.stat(full).st_mtime < cutoff:
                        os.unlink(full)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed
