"""``FaultInjectingFileSystem``: a layer that makes calls fail, for resilience tests.

It wraps any fsspec filesystem like every aiofs layer and, before delegating a call,
decides (from a seeded random generator) whether to raise ``ConnectionError`` or
``TimeoutError`` instead. A failed call never reaches the target, so it wrote nothing.
``unplug()`` makes every call fail (a pulled network cable) until ``plug()``::

    flaky = FaultInjectingFileSystem(fs=backend, failure_rate=0.2, seed=1,
                                     errors=["ConnectionError", "TimeoutError"])
    flaky.unplug(); ...; flaky.plug()
    flaky.calls, flaky.failures        # counters for assertions

The errors raised are :class:`aiofs.errors.BackendUnavailable` (a ``ConnectionError``)
and :class:`aiofs.errors.Timeout` (a ``TimeoutError``), so both plain ``except`` clauses
and aiofs's error table recognise them.

One user-level call is one decision: when a delegated method calls other methods of this
layer (a recursive ``rm`` listing directories first), only the outermost call may fail,
and it fails before anything below was touched. Files opened through this layer are
wrapped too: ``read``/``write`` on them may fail the same way (a failed write passes no
bytes down; leaving the ``with`` block through the error abandons an atomic write).
"""

from __future__ import annotations

import collections
import io
import random
import threading
from typing import Any

import fsspec

from aiofs.errors import BackendUnavailable, InvalidArgument, Timeout
from aiofs.layer import Layer

__all__ = ["FaultInjectingFileSystem", "FaultyFile", "ERROR_KINDS"]

ERROR_KINDS: dict[str, type[OSError]] = {
    "ConnectionError": BackendUnavailable,
    "TimeoutError": Timeout,
}


class FaultInjectingFileSystem(Layer):
    """A pass-through layer that fails a fraction of calls, deterministically by ``seed``.

    Options (plain data, so it pickles): ``failure_rate`` (0.0-1.0), ``seed``, ``errors``
    (names from :data:`ERROR_KINDS`, picked at random per failure), ``operations`` (only
    these method names may fail; ``None`` means all) and ``unplugged`` (start with every
    call failing). Counters: ``calls``, ``failures``, and per operation ``call_counts``
    and ``failure_counts``.
    """

    protocol = "aiofs-faults"

    def __init__(
        self,
        fs=None,
        target_protocol=None,
        target_options=None,
        failure_rate: float = 0.1,
        seed: int = 0,
        errors: list[str] | None = None,
        operations: list[str] | None = None,
        unplugged: bool = False,
        **options: Any,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options, **options)
        if not 0.0 <= float(failure_rate) <= 1.0:
            raise InvalidArgument(f"failure_rate must be between 0 and 1, not {failure_rate!r}")
        errors = list(errors) if errors is not None else ["ConnectionError", "TimeoutError"]
        unknown = [e for e in errors if e not in ERROR_KINDS]
        if not errors or unknown:
            raise InvalidArgument(
                f"errors must be a non-empty list of {sorted(ERROR_KINDS)}, got {errors!r}"
            )
        self.failure_rate = float(failure_rate)
        self.seed = int(seed)
        self.errors = errors
        self.operations = None if operations is None else frozenset(operations)
        self.unplugged = bool(unplugged)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.calls = 0
        self.failures = 0
        self.call_counts: collections.Counter[str] = collections.Counter()
        self.failure_counts: collections.Counter[str] = collections.Counter()

    # -- control ---------------------------------------------------------------------------

    def unplug(self) -> None:
        """Make every call fail with ``ConnectionError`` until :meth:`plug`."""
        self.unplugged = True

    def plug(self) -> None:
        """Back to failing only ``failure_rate`` of the calls."""
        self.unplugged = False

    def reset(self, seed: int | None = None) -> None:
        """Zero the counters and restart the random sequence (from ``seed`` if given)."""
        with self._lock:
            if seed is not None:
                self.seed = int(seed)
            self._rng = random.Random(self.seed)
            self.calls = self.failures = 0
            self.call_counts.clear()
            self.failure_counts.clear()

    # -- the decision ----------------------------------------------------------------------

    def check(self, operation: str, path: Any = None) -> None:
        """Count one call and raise an injected error for it, or return to let it through."""
        with self._lock:
            self.calls += 1
            self.call_counts[operation] += 1
            eligible = self.operations is None or operation in self.operations
            draw, kind = 1.0, self.errors[0]
            if eligible:
                # Draw for every eligible call, so the decisions depend only on the seed
                # and the order of calls, not on unplug() in between.
                draw = self._rng.random()
                kind = self.errors[self._rng.randrange(len(self.errors))]
            if self.unplugged:  # a pulled cable: everything fails
                kind = "ConnectionError" if "ConnectionError" in self.errors else kind
            elif draw >= self.failure_rate:
                return
            self.failures += 1
            self.failure_counts[operation] += 1
        reason = "unplugged" if self.unplugged else "injected fault"
        raise ERROR_KINDS[kind](f"{reason} in {operation}", None if path is None else str(path))

    def _call(self, operation: str, path: Any, method, *args, **kwargs):
        """Decide once for the outermost call, then delegate (nested calls pass freely)."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self.check(operation, path)
        self._local.depth = depth + 1
        try:
            return method(*args, **kwargs)
        finally:
            self._local.depth = depth

    # -- every delegated primitive, explicitly -----------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        return self._call("ls", path, super().ls, path, detail=detail, **kwargs)

    def info(self, path, **kwargs):
        return self._call("info", path, super().info, path, **kwargs)

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        return self._call(
            "find", path, super().find, path, maxdepth=maxdepth, withdirs=withdirs,
            detail=detail, **kwargs,
        )

    def created(self, path):
        return self._call("created", path, super().created, path)

    def modified(self, path):
        return self._call("modified", path, super().modified, path)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        f = self._call(
            "open", path, super()._open, path, mode=mode, block_size=block_size,
            autocommit=autocommit, cache_options=cache_options, **kwargs,
        )
        return FaultyFile(f, self, path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        return self._call("cat_file", path, super().cat_file, path, start=start, end=end, **kwargs)

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        return self._call("cat", path, super().cat, path, recursive=recursive, on_error=on_error, **kwargs)

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        return self._call(
            "get_file", rpath, super().get_file, rpath, lpath, callback=callback,
            outfile=outfile, **kwargs,
        )

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        return self._call("pipe_file", path, super().pipe_file, path, value, mode=mode, **kwargs)

    def pipe(self, path, value=None, **kwargs):
        return self._call("pipe", path, super().pipe, path, value=value, **kwargs)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        return self._call(
            "put_file", rpath, super().put_file, lpath, rpath, callback=callback, mode=mode, **kwargs
        )

    def cp_file(self, path1, path2, **kwargs):
        return self._call("cp_file", path1, super().cp_file, path1, path2, **kwargs)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        return self._call(
            "mv", path1, super().mv, path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs
        )

    def rm_file(self, path):
        return self._call("rm_file", path, super().rm_file, path)

    def rm(self, path, recursive=False, maxdepth=None):
        return self._call("rm", path, super().rm, path, recursive=recursive, maxdepth=maxdepth)

    def mkdir(self, path, create_parents=True, **kwargs):
        return self._call("mkdir", path, super().mkdir, path, create_parents=create_parents, **kwargs)

    def makedirs(self, path, exist_ok=False):
        return self._call("makedirs", path, super().makedirs, path, exist_ok=exist_ok)

    def rmdir(self, path):
        return self._call("rmdir", path, super().rmdir, path)

    def touch(self, path, truncate=True, **kwargs):
        return self._call("touch", path, super().touch, path, truncate=truncate, **kwargs)

    def ukey(self, path):
        return self._call("ukey", path, super().ukey, path)


class FaultyFile(io.BufferedIOBase):
    """A file opened through :class:`FaultInjectingFileSystem`: reads and writes may fail.

    Each ``read``/``write`` is one decision (operations ``"read"`` / ``"write"``); a failed
    call passes nothing to the wrapped file. ``close`` and ``seek`` never fail, so leaving a
    ``with`` block still commits (no error) or abandons (error) the wrapped file.
    """

    def __init__(self, f, owner: FaultInjectingFileSystem, path):
        super().__init__()
        self.f = f
        self.owner = owner
        self.path = path

    # io interface ------------------------------------------------------------------------

    def readable(self) -> bool:
        return self.f.readable()

    def writable(self) -> bool:
        return self.f.writable()

    def seekable(self) -> bool:
        return self.f.seekable()

    def read(self, size=-1):
        self.owner.check("read", self.path)
        return self.f.read(size)

    def readline(self, size=-1):
        self.owner.check("read", self.path)
        return self.f.readline(size)

    def read1(self, size=-1):
        return self.read(size)

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def write(self, data):
        self.owner.check("write", self.path)
        return self.f.write(data)

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def flush(self):
        if not self.closed and not getattr(self.f, "closed", False):
            self.f.flush()

    def close(self):
        if self.closed:
            return
        try:
            self.f.close()
        finally:
            super().close()

    def discard(self):
        """Abandon the wrapped file's write (atomic backends), else just close it."""
        if self.closed:
            return
        try:
            if hasattr(self.f, "discard"):
                self.f.discard()
            elif hasattr(self.f, "__exit__"):
                self.f.__exit__(RuntimeError, RuntimeError("write abandoned"), None)
            else:
                self.f.close()
        finally:
            super().close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.discard()

    @property
    def size(self):
        """The wrapped file's size attribute, when it has one (fsspec buffered files)."""
        return getattr(self.f, "size", None)
