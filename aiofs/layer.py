"""``Layer``: the delegating base class every aiofs layer subclasses.

Contract (DESIGN.md "The layer contract"), written next to the code:

* A layer wraps one **target** fsspec filesystem, given as ``fs=`` or built from
  ``target_protocol=`` / ``target_options=``; exactly one of the two.
* Same path namespace as the target: a path means the same file above and below.
* Delegation is explicit (no ``__getattr__``): every primitive below is written out. A layer
  that changes bytes or meaning overrides the primitives it changes and nothing else. The
  bulk and convenience calls ``cat``, ``pipe``, ``touch``, ``get_file`` and ``put_file`` pass
  bytes straight down here too, so a layer that transforms bytes overrides them as well.
* Internal data lives under the reserved ``.aiofs/`` directory. :func:`is_internal` is the
  one place that decides what is internal. Listings never show it, ``info`` raises
  ``FileNotFoundError`` for it and writes to it are refused, except inside
  :func:`internal_access`, which layers use to reach their own (or a lower layer's) data.
* ``ls``/``info``/``find`` report **logical** sizes: a layer that stores a different number
  of bytes than a reader gets overrides :meth:`Layer._logical_entry`.
* Options are plain data, so a layer pickles and rebuilds from its arguments.
* ``capabilities`` are the target's, minus what this layer cannot keep, plus what it adds.
* ``repr()`` shows the whole stack: ``Versioning(Dedup(Local('/data')))``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import io
import os
import posixpath
from collections.abc import Iterator
from typing import Any, TypeVar

import fsspec
from fsspec.spec import AbstractFileSystem

try:  # fsspec's marker base class: lets chained URLs ("aiofs-layer::memory://x") pass the path
    from fsspec.implementations.chained import ChainedFileSystem
except ImportError:  # older fsspec: chaining still works for URLs that carry the full path
    ChainedFileSystem = AbstractFileSystem

from aiofs.errors import InvalidArgument, InvalidPath, ReservedPath

INTERNAL_DIR = ".aiofs"

_internal_access: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aiofs_internal_access", default=False
)

L = TypeVar("L")


def is_internal(path: str) -> bool:
    """True when ``path`` lies under a reserved ``.aiofs`` directory (any component)."""
    if not isinstance(path, str):  # bytes or PathLike: the target validates the encoding
        path = os.fsdecode(fsspec.utils.stringify_path(path))
    if INTERNAL_DIR not in path:  # fast path: almost every path
        return False
    return INTERNAL_DIR in path.replace("\\", "/").split("/")


def has_glob(path: str) -> bool:
    """True when ``path`` is a glob pattern (fsspec's magic characters)."""
    return any(char in path for char in "*?[")


def internals_visible() -> bool:
    """True inside :func:`internal_access`: internal paths are reachable and listed."""
    return _internal_access.get()


@contextlib.contextmanager
def internal_access() -> Iterator[None]:
    """Let the calls made inside reach ``.aiofs/`` paths (for layers, ``check``, ``gc``)."""
    token = _internal_access.set(True)
    try:
        yield
    finally:
        _internal_access.reset(token)


def visible_entries(entries: list, detail: bool) -> list:
    """Drop internal entries from an ``ls`` result, unless internals are visible."""
    if internals_visible():
        return entries
    if detail:
        return [e for e in entries if not is_internal(e["name"])]
    return [e for e in entries if not is_internal(e)]


def hide_internal_path(path: str) -> None:
    """Raise ``FileNotFoundError`` for an internal path, unless internals are visible."""
    if is_internal(path) and not internals_visible():
        raise FileNotFoundError(path)


def refuse_internal_write(path: str) -> None:
    """Raise ``RESERVED_PATH`` for a write to an internal path from outside the stack."""
    if is_internal(path) and not internals_visible():
        raise ReservedPath(f"'{INTERNAL_DIR}' is reserved for aiofs internal data", path)


# Capability flags. A stack claims a capability only if its bottom has it and no layer
# in between removes it.
EMPTY_DIRECTORIES = "empty_directories"
SERVER_SIDE_COPY = "server_side_copy"
NATIVE_VERSIONS = "native_versions"
DUPLICATE_NAMES = "duplicate_names"
ATOMIC_WRITES = "atomic_writes"
RANGE_READS = "range_reads"

# What well-known fsspec filesystems support, by protocol (anything else: range reads only).
_KNOWN_CAPABILITIES: dict[str, frozenset[str]] = {
    "file": frozenset({EMPTY_DIRECTORIES, SERVER_SIDE_COPY, RANGE_READS}),
    "local": frozenset({EMPTY_DIRECTORIES, SERVER_SIDE_COPY, RANGE_READS}),
    # not atomic: fsspec's memory file replaces the old content when opened for writing
    "memory": frozenset({EMPTY_DIRECTORIES, SERVER_SIDE_COPY, RANGE_READS}),
    "s3": frozenset({SERVER_SIDE_COPY, ATOMIC_WRITES, RANGE_READS}),
    "gcs": frozenset({SERVER_SIDE_COPY, ATOMIC_WRITES, RANGE_READS}),
}


def capabilities_of(fs: AbstractFileSystem) -> frozenset[str]:
    """The capability flags of any fsspec filesystem (aiofs ones declare their own)."""
    declared = getattr(fs, "capabilities", None)
    if isinstance(declared, frozenset):
        return declared
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    for protocol in protocols:
        if protocol in _KNOWN_CAPABILITIES:
            return _KNOWN_CAPABILITIES[protocol]
    return frozenset({RANGE_READS})


def describe(fs: AbstractFileSystem) -> str:
    """A short description of a filesystem for stack reprs: ``Local('/data')``, ``Memory()``."""
    if isinstance(fs, Layer) or hasattr(fs, "_aiofs_describe"):
        return repr(fs)
    name = type(fs).__name__
    if name.endswith("FileSystem"):
        name = name[: -len("FileSystem")]
    return f"{name}()"


def target_identity(fs: AbstractFileSystem) -> str:
    """A stable identity of a filesystem, for state kept about it (size caches, quota DBs).

    Its ``fsid`` where it has one (fsspec's default raises ``NotImplementedError``), else
    its class and storage options, which is what fsspec itself uses to tell instances apart.
    """
    try:
        fsid = fs.fsid
    except (NotImplementedError, AttributeError):
        fsid = None
    if fsid:
        return str(fsid)
    options = sorted((str(k), repr(v)) for k, v in (getattr(fs, "storage_options", None) or {}).items())
    return f"{type(fs).__module__}.{type(fs).__qualname__}:{options}"


# Keys of a target's ls/info entry that change when an object is rewritten (the "stamp").
_STAMP_KEYS = ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "md5Hash",
               "generation", "version_id", "VersionId")
_STAMP_EXTRA_KEYS = ("ino",)           # local disks: a rewrite is a new inode (temp + rename)
_STAMP_FALLBACK_KEYS = ("created",)    # fsspec memory: a new file object per write


def _stamp_value(value) -> str:
    if type(value) is float:  # the common case first: this runs once per listed file
        return repr(value)
    if isinstance(value, datetime.datetime):
        return repr(value.timestamp())
    if isinstance(value, float):
        return repr(value)
    return str(value)


def stamp_of(entry: dict) -> str | None:
    """What identifies this version of an object in a target entry; ``None`` if nothing does.

    An entry without any such key is never cached (its size is read every time).
    """
    get = entry.get
    parts = []
    for key in _STAMP_KEYS:
        value = get(key)
        if value is not None:
            parts.append(f"{key}={_stamp_value(value)}")
    if not parts:
        for key in _STAMP_FALLBACK_KEYS:
            value = get(key)
            if value is not None:
                parts.append(f"{key}={_stamp_value(value)}")
        if not parts:
            return None
    for key in _STAMP_EXTRA_KEYS:
        value = get(key)
        if value is not None:
            parts.append(f"{key}={_stamp_value(value)}")
    return ";".join(parts)


def find_layer(fs: AbstractFileSystem, cls: type[L]) -> L | None:
    """The first filesystem of class ``cls`` in the stack, top down; ``None`` if absent."""
    current: Any = fs
    while current is not None:
        if isinstance(current, cls):
            return current
        current = getattr(current, "fs", None) if isinstance(current, Layer) else None
    return None


class WriteOnlyFile:
    """Mixin for the files a stack opens for writing: what they answer about themselves
    (writable, never readable, seekable when the class sets ``SEEKABLE``). Put it before
    ``io.BufferedIOBase`` in the bases."""

    __slots__ = ()
    SEEKABLE = False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return self.SEEKABLE


class DiscardOnErrorText(io.TextIOWrapper):
    """A text-mode file whose ``with`` block, left by an exception, discards the write.

    fsspec's ``open(path, "w")`` wraps the binary file in a plain ``TextIOWrapper``, whose
    ``__exit__`` always closes (so commits) it: a failure half way would store half a file.
    """

    def __exit__(self, exc_type, exc, tb):
        discard = getattr(self.buffer, "discard", None)
        if exc_type is not None and callable(discard) and self.buffer.writable():
            discard()
            return None
        return super().__exit__(exc_type, exc, tb)


class SafeTextWrites:
    """Mixin for aiofs filesystems: text-mode writes are all-or-nothing like binary ones."""

    def open(self, path, mode="rb", block_size=None, cache_options=None, compression=None, **kwargs):
        if "b" in mode or "r" in mode or compression is not None:
            return super().open(path, mode, block_size=block_size, cache_options=cache_options,
                                compression=compression, **kwargs)
        text_kwargs = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
        binary = super().open(path, mode.replace("t", "") + "b", block_size=block_size,
                              cache_options=cache_options, **kwargs)
        return DiscardOnErrorText(binary, **text_kwargs)


class Layer(SafeTextWrites, ChainedFileSystem):
    """A filesystem layer over a target filesystem; used directly, a pass-through layer.

    ``Layer(fs=target)`` or ``Layer(target_protocol="memory", target_options={...})``.
    Subclasses add their options as keyword arguments of plain data and call
    ``super().__init__(fs=fs, target_protocol=..., target_options=..., **options)``.
    """

    protocol = "aiofs-layer"
    root_marker = ""
    # Layers keep state (indexes, journals): never hand out a cached instance whose token
    # happens to print the same. Subclasses that are stateless may turn this back on.
    cachable = False
    # Capabilities this layer cannot preserve, and those it adds on its own.
    removes_capabilities: frozenset[str] = frozenset()
    adds_capabilities: frozenset[str] = frozenset()

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict | None = None,
        **options: Any,
    ):
        if (fs is None) == (target_protocol is None):
            raise InvalidArgument("give exactly one of fs= or target_protocol=")
        if fs is None:
            fs = fsspec.filesystem(target_protocol, **(target_options or {}))
        options.pop("fo", None)  # the path of a chained URL: the target already has it
        super().__init__(**options)
        self.fs = fs
        self.options = options
        # Same namespace as the target, spelled the same way: fsspec's generic glob, copy
        # and get logic compare our stripped paths with the names the target returns.
        self.root_marker = fs.root_marker
        self._strip_protocol = self._strip_like_target

    # -- stack introspection -------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe(self.fs)})"

    def find_layer(self, cls: type[L]) -> L | None:
        """The first layer (or backend) of class ``cls`` in this stack, top down."""
        return find_layer(self, cls)

    @property
    def capabilities(self) -> frozenset[str]:
        """Capability flags of the stack from this layer down."""
        below = capabilities_of(self.fs)
        return (below - self.removes_capabilities) | self.adds_capabilities

    @property
    def fsid(self) -> str:
        return f"{type(self).__name__}:{getattr(self.fs, 'fsid', describe(self.fs))}"

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = fsspec.utils.stringify_path(path)
        if isinstance(path, bytes):
            try:
                path = path.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidPath(f"path is not valid UTF-8: {path!r}") from None
        for protocol in (cls.protocol,) if isinstance(cls.protocol, str) else cls.protocol:
            prefix = f"{protocol}://"
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        return path.rstrip("/") or cls.root_marker

    def _strip_like_target(self, path):
        """Strip our protocol, then normalise the path as the target does."""
        if type(path) is str and "://" not in path:
            # the common case, once per call of every operation: no protocol to strip
            return self.fs._strip_protocol(path.rstrip("/"))
        if isinstance(path, list):
            return [self._strip_like_target(p) for p in path]
        return self.fs._strip_protocol(type(self)._strip_protocol(path))

    def _logical_entry(self, entry: dict) -> dict:
        """Turn a target ``ls``/``info`` entry into what readers of this layer see.

        Identity here. Layers whose stored size differs from the logical size return a
        *copy* with the logical ``size`` (never mutate: the dict may live in the target's
        dircache).
        """
        return entry

    def unlisted_names(self) -> frozenset[str]:
        """Names at the stack root that open by path but are not listed (``.versions``).

        A capability for callers that cache listings (the mount): a name missing from a
        cached root listing is absent unless it is one of these. Layers that add such a
        name extend what the layer below reports.
        """
        below = getattr(self.fs, "unlisted_names", None)
        return below() if callable(below) else frozenset()

    # -- listing and metadata ------------------------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        hide_internal_path(path)
        entries = self.fs.ls(path, detail=detail, **kwargs)
        entries = visible_entries(entries, detail)
        if detail:
            return [self._logical_entry(e) for e in entries]
        return entries

    def info(self, path, **kwargs):
        hide_internal_path(path)
        return self._logical_entry(self.fs.info(path, **kwargs))

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        if is_internal(path) and not internals_visible():
            return {} if detail else []  # as for a missing path (and so glob gives [])
        found = self.fs.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        show_internal = internals_visible()
        result = {
            name: self._logical_entry(entry)
            for name, entry in found.items()
            if show_internal or not is_internal(name)
        }
        return result if detail else sorted(result)

    def created(self, path):
        hide_internal_path(path)
        return self.fs.created(path)

    def modified(self, path):
        hide_internal_path(path)
        return self.fs.modified(path)

    def invalidate_cache(self, path=None):
        self.fs.invalidate_cache(path)

    # -- reading ---------------------------------------------------------------------------

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "r" in mode:
            hide_internal_path(path)
        else:
            refuse_internal_write(path)
        return self.fs._open(
            path, mode=mode, block_size=block_size, autocommit=autocommit,
            cache_options=cache_options, **kwargs,
        )

    def cat_file(self, path, start=None, end=None, **kwargs):
        hide_internal_path(path)
        return self.fs.cat_file(path, start=start, end=end, **kwargs)

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        # Bulk reads go down as one bulk call, so an async target reads concurrently.
        if isinstance(path, list) and not recursive and not any(has_glob(p) for p in path):
            for p in path:  # plain list: the target normalises it, no second expansion here
                hide_internal_path(p)
            return self.fs.cat(path, on_error=on_error, **kwargs)
        paths = self.expand_path(path, recursive=recursive)
        for p in paths:
            hide_internal_path(p)
        if len(paths) == 1 and paths[0] == self._strip_protocol(path) and not recursive \
                and not isinstance(path, list) and not has_glob(path):
            return self.fs.cat_file(paths[0], **kwargs)
        return self.fs.cat(paths, on_error=on_error, **kwargs)

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        hide_internal_path(rpath)
        return self.fs.get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)

    # -- writing ---------------------------------------------------------------------------

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        refuse_internal_write(path)
        return self.fs.pipe_file(path, value, mode=mode, **kwargs)

    def pipe(self, path, value=None, **kwargs):
        # Bulk writes go down as one bulk call (concurrent on async targets); the target
        # normalises the keys, so only our own protocol prefix is removed here.
        if isinstance(path, str):
            path = {path: value}
        prefix = f"{self.protocol}://" if isinstance(self.protocol, str) else None
        if prefix and any(isinstance(k, str) and k.startswith(prefix) for k in path):
            path = {type(self)._strip_protocol(k): v for k, v in path.items()}
        for p in path:
            refuse_internal_write(p)
        return self.fs.pipe(path, **kwargs)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        refuse_internal_write(rpath)
        return self.fs.put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        hide_internal_path(path1)
        refuse_internal_write(path2)
        return self.fs.cp_file(path1, path2, **kwargs)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        for p in (path1 if isinstance(path1, list) else [path1]):
            refuse_internal_write(p)
        refuse_internal_write(path2)
        result = self.fs.mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        if recursive and isinstance(path1, str) and not isinstance(self.fs, Layer) \
                and EMPTY_DIRECTORIES in capabilities_of(self.fs):
            # A directory moved to a new parent: fsspec's memory filesystem does not make
            # that parent a directory of its own (only implied by its child, it would vanish
            # with it, even after a makedirs of the child). A no-op where directories are real.
            parent = self._parent(path2)
            if parent and self.fs.isdir(path2):
                self.fs.makedirs(parent, exist_ok=True)
        return result

    def rm_file(self, path):
        refuse_internal_write(path)
        return self.fs.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        paths = [self._strip_protocol(p) for p in (path if isinstance(path, list) else [path])]
        for p in paths:
            refuse_internal_write(p)
        if not recursive or internals_visible():
            return self.fs.rm(paths, recursive=recursive, maxdepth=maxdepth)
        # A recursive delete must never take internal data with it: a directory that holds
        # a '.aiofs' directory (the store root) is emptied of its visible entries instead.
        plain = []
        for p in self.expand_path(paths, recursive=False):
            if self._holds_internal_dir(p):
                children = self.ls(p, detail=False)
                if children:
                    self.rm(children, recursive=True, maxdepth=maxdepth)
            else:
                plain.append(p)
        if plain:
            self.fs.rm(plain, recursive=True, maxdepth=maxdepth)

    def _holds_internal_dir(self, path: str) -> bool:
        with internal_access():
            return self.fs.isdir(posixpath.join(path, INTERNAL_DIR))

    def mkdir(self, path, create_parents=True, **kwargs):
        refuse_internal_write(path)
        return self.fs.mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path, exist_ok=False):
        refuse_internal_write(path)
        return self.fs.makedirs(path, exist_ok=exist_ok)

    def rmdir(self, path):
        refuse_internal_write(path)
        return self.fs.rmdir(path)

    def touch(self, path, truncate=True, **kwargs):
        refuse_internal_write(path)
        return self.fs.touch(path, truncate=truncate, **kwargs)

    # -- checksums -------------------------------------------------------------------------

    def ukey(self, path):
        hide_internal_path(path)
        return self.fs.ukey(path)
