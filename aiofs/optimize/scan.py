"""The one walk every optimization command starts from, and the stack introspection they share.

Contract:

* :func:`scan` lists a stack (or a folder of it) with **one** ``find(detail=True)`` call and
  no per-file reads, returning :class:`FileEntry` objects (logical size, mtime, the entry as
  the stack reports it). Internal data (``.aiofs/``) never appears, as for any listing.
* :func:`stack_of` walks a stack top to bottom through the ``Layer.fs`` links (any object
  with an ``fs`` attribute that is an fsspec filesystem), so layers and backends are found
  by duck typing: nothing here imports a concrete layer.
* :func:`layer_stats` calls a ``stats()`` method on every filesystem of the stack that has
  one; what each returns is its own business (plain JSON-able data).
* :func:`category_of` names the kind of a file from its extension (``image``, ``video``,
  ``document``, ``code``, ``other``), using ``filetype``'s table of known formats plus
  lists of document and code extensions. Content is not read: on a stack with ``Validate``
  the content of every file already agreed with its extension when it was written.
* :func:`age_bucket` puts a modification time into ``<7d``, ``<30d``, ``<365d``, ``older``
  (or ``unknown`` when the stack reports no time).
"""

from __future__ import annotations

import datetime
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import filetype
from fsspec.spec import AbstractFileSystem

from aiofs.errors import InvalidArgument, InvalidPath, NotFound

__all__ = [
    "FileEntry", "scan", "normalize_path", "stack_of", "bottom_of", "layer_name", "layer_stats",
    "category_of", "CATEGORIES", "age_bucket", "AGE_BUCKETS", "mtime_of", "local_root",
    "has_layer_named", "DAY", "dedup_layer", "stored_estimate", "stored_fraction",
]

DAY = 86400.0
CATEGORIES = ("image", "video", "document", "code", "other")
AGE_BUCKETS = (("<7d", 7), ("<30d", 30), ("<365d", 365), ("older", None))

_EXTRA_IMAGE = {"jpeg", "jpe", "jfif", "tiff", "svg", "heif", "nef", "arw", "dng", "raw", "exr",
                "hdr", "tga", "jp2", "ico", "icns", "avifs"}
_EXTRA_VIDEO = {"mpeg", "m2ts", "mts", "ogv", "3g2", "vob", "qt", "f4v", "asf", "divx"}
_DOCUMENT = {"pdf", "rtf", "epub", "ps", "txt", "md", "markdown", "rst", "csv", "tsv", "odg",
             "pages", "numbers", "key", "tex", "docm", "xlsm", "pptm", "org", "adoc", "xps",
             "djvu", "mobi", "azw3", "vsdx", "one", "log"}
_CODE = {"py", "pyi", "ipynb", "js", "mjs", "cjs", "ts", "tsx", "jsx", "java", "kt", "kts",
         "scala", "c", "h", "cc", "cpp", "cxx", "hpp", "hh", "cs", "go", "rs", "rb", "php",
         "swift", "m", "mm", "r", "jl", "lua", "pl", "pm", "dart", "vue", "svelte", "sh",
         "bash", "zsh", "fish", "ps1", "bat", "cmd", "sql", "html", "htm", "css", "scss",
         "sass", "less", "json", "jsonl", "yaml", "yml", "toml", "xml", "ini", "cfg", "conf",
         "gradle", "cmake", "mk", "proto", "graphql", "hs", "ml", "ex", "exs", "erl", "clj",
         "elm", "zig", "nim", "v", "sv", "vhd", "asm", "s", "wat", "glsl", "hlsl", "tf"}
_CODE_NAMES = {"makefile", "dockerfile", "cmakelists.txt", "gemfile", "rakefile", "procfile",
               "jenkinsfile", "vagrantfile", "justfile"}


def _extension_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for matcher in filetype.image_matchers:
        table[matcher.extension.lower()] = "image"
    for matcher in filetype.video_matchers:
        table[matcher.extension.lower()] = "video"
    for matcher in filetype.document_matchers:
        table[matcher.extension.lower()] = "document"
    table.update(dict.fromkeys(_EXTRA_IMAGE, "image"))
    table.update(dict.fromkeys(_EXTRA_VIDEO, "video"))
    table.update(dict.fromkeys(_DOCUMENT, "document"))
    table.update(dict.fromkeys(_CODE, "code"))
    for ext in ("dcm", "dwg"):  # filetype files these under images; they are not pictures
        table.pop(ext, None)
    table["dwg"] = "document"
    return table


EXTENSION_CATEGORY = _extension_table()


def category_of(path: str) -> str:
    """``image``, ``video``, ``document``, ``code`` or ``other``, from the file's name."""
    name = posixpath.basename(path).lower()
    if name in _CODE_NAMES:
        return "code"
    _, dot, ext = name.rpartition(".")
    if not dot or not _:
        return "other"
    return EXTENSION_CATEGORY.get(ext, "other")


def mtime_of(entry: dict) -> float | None:
    """The modification time of a listing entry in seconds since the epoch, if it has one."""
    for key in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        value = entry.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, str):
            try:
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            return parsed.timestamp()
    return None


def age_bucket(mtime: float | None, now: float) -> str:
    """The age bucket of a modification time: ``<7d``, ``<30d``, ``<365d``, ``older``, ``unknown``."""
    if mtime is None:
        return "unknown"
    age = now - mtime
    for label, days in AGE_BUCKETS:
        if days is None or age < days * DAY:
            return label
    return "older"


@dataclass(slots=True)
class FileEntry:
    """One file of a scan: its path as shown to users (``/a/b``), sizes and time."""

    path: str
    name: str  # the name the stack uses (pass this back to the stack's methods)
    size: int
    mtime: float | None
    entry: dict = field(repr=False)

    @property
    def stored_size(self) -> int:
        """The bytes the layer below reports storing (``stored_size``), else the logical size."""
        stored = self.entry.get("stored_size")
        return stored if isinstance(stored, int) else self.size


def display(name: str) -> str:
    """How a stack path is shown: ``/a/b``."""
    return "/" + name.strip("/")


def normalize_path(fs: AbstractFileSystem, path: str | None) -> str:
    """A folder argument as the stack names it; ``INVALID_PATH`` for one leaving the root."""
    path = (path or "").replace("\\", "/")
    if "\x00" in path:
        raise InvalidPath("path contains a NUL byte", path)
    clean = posixpath.normpath("/" + path.strip("/")) if path.strip("/") else "/"
    if any(part == ".." for part in path.split("/")):
        # normpath of "/" + "../x" silently stays inside; a path that tries to leave is refused
        depth = 0
        for part in path.strip("/").split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    raise InvalidPath(f"path leaves the stack root: {path!r}", path)
            elif part not in ("", "."):
                depth += 1
    if clean == "/":
        return fs.root_marker
    return fs._strip_protocol(clean)


def scan(fs: AbstractFileSystem, path: str = "", withdirs: bool = False) -> tuple[list[FileEntry], list[str]]:
    """Every file below ``path`` (one ``find(detail=True)``), plus the directories if asked.

    Raises ``NOT_FOUND`` when ``path`` names nothing (the stack root always exists).
    """
    root = normalize_path(fs, path)
    found = fs.find(root, withdirs=withdirs, detail=True)
    if not found and root not in ("", "/", fs.root_marker) and not fs.exists(root):
        raise NotFound(f"no such file or directory: {display(root)}", display(root))
    files: list[FileEntry] = []
    dirs: list[str] = []
    for name, entry in found.items():
        kind = entry.get("type")
        if kind == "directory":
            if name.strip("/") != root.strip("/"):
                dirs.append(name)
            continue
        if kind != "file":
            continue
        size = entry.get("size") or 0
        files.append(FileEntry(display(name), name, int(size), mtime_of(entry), entry))
    return files, dirs


def stack_of(fs: AbstractFileSystem) -> list[AbstractFileSystem]:
    """The filesystems of a stack, top to bottom (following ``.fs`` links)."""
    chain: list[AbstractFileSystem] = []
    current: Any = fs
    seen: set[int] = set()
    while isinstance(current, AbstractFileSystem) and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = getattr(current, "fs", None)
    return chain


def bottom_of(fs: AbstractFileSystem) -> AbstractFileSystem:
    """The backend at the bottom of a stack."""
    return stack_of(fs)[-1]


def layer_name(fs: AbstractFileSystem) -> str:
    """A short lower-case name: ``Quota`` -> ``quota``, ``LocalBackend`` -> ``local``."""
    name = type(fs).__name__
    for suffix in ("Backend", "FileSystem", "Layer"):
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
    return name.lower()


def has_layer_named(fs: AbstractFileSystem, word: str, capability: str | None = None) -> AbstractFileSystem | None:
    """The first filesystem of the stack whose class name contains ``word`` (any case), or
    which itself adds ``capability`` (``adds_capabilities``); ``None`` if there is none.

    Duck typing on purpose: optimization never imports a layer class.
    """
    for layer in stack_of(fs):
        adds = getattr(type(layer), "adds_capabilities", None) or getattr(layer, "adds_capabilities", None)
        if capability and isinstance(adds, (set, frozenset)) and capability in adds:
            return layer
        if word in type(layer).__name__.lower():
            return layer
    return None


def layer_stats(fs: AbstractFileSystem) -> dict[str, dict]:
    """``{name: stats}`` for every filesystem of the stack with a callable ``stats()``.

    Names are :func:`layer_name`; a second layer of the same kind gets ``#2``. A ``stats()``
    that fails is reported as ``{"error": "..."}`` rather than failing the overview.
    """
    result: dict[str, dict] = {}
    for layer in stack_of(fs):
        method = getattr(layer, "stats", None)
        if not callable(method):
            continue
        name = layer_name(layer)
        key, n = name, 1
        while key in result:
            n += 1
            key = f"{name}#{n}"
        try:
            value = method()
        except Exception as exc:  # one layer's broken stats must not hide the others
            value = {"error": f"{type(exc).__name__}: {exc}"}
        result[key] = value if isinstance(value, dict) else {"value": value}
    return result


def local_root(fs: AbstractFileSystem) -> str | None:
    """The directory on the local disk that a stack's bottom stores into, if it is local."""
    bottom = bottom_of(fs)
    root = getattr(bottom, "root", None)
    protocols = bottom.protocol if isinstance(bottom.protocol, tuple) else (bottom.protocol,)
    if isinstance(root, str) and callable(getattr(bottom, "_full", None)) and os.path.isdir(root):
        return root
    if {"file", "local"} & set(protocols):
        return "/"
    return None


def check_days(value: float | None, name: str) -> float | None:
    """A number of days given by a user: non-negative, or ``INVALID_ARGUMENT``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative number of days, got {value!r}")
    return float(value)


def describe_stack(fs: AbstractFileSystem) -> str:
    """``repr``-like text of a stack: ``Quota(Local('/data'))``."""
    from aiofs.layer import describe

    return describe(fs)


def dedup_layer(fs: AbstractFileSystem) -> AbstractFileSystem | None:
    """The layer of the stack that shares identical content, if any (duck typed: a class
    name containing ``dedup``, or ``"dedup"`` in its ``adds_capabilities``/``capabilities``;
    the Dedup layer is never imported here)."""
    chain = stack_of(fs)
    for layer in chain:
        adds = getattr(type(layer), "adds_capabilities", None)
        if "dedup" in type(layer).__name__.lower() or (isinstance(adds, (set, frozenset)) and "dedup" in adds):
            return layer
    for layer in reversed(chain):  # the lowest one that claims the capability introduced it
        caps = getattr(layer, "capabilities", None)
        if isinstance(caps, (set, frozenset)) and "dedup" in caps:
            return layer
    return None


def stored_fraction(fs: AbstractFileSystem) -> float | None:
    """Above a Dedup layer, its ``stored_bytes / logical_bytes`` (from its ``stats()``, at most
    1); ``None`` when the stack has no Dedup layer."""
    dedup = dedup_layer(fs)
    if dedup is None:
        return None
    stats = getattr(dedup, "stats", None)
    try:
        s = stats() if callable(stats) else {}
    except Exception:  # broken stats: assume nothing is shared
        s = {}
    logical, stored = s.get("logical_bytes"), s.get("stored_bytes")
    return min(stored / logical, 1.0) if logical and stored is not None else 1.0


_UNSET = object()


def stored_estimate(fs: AbstractFileSystem, files: list[FileEntry], fraction=_UNSET) -> int:
    """Stored bytes that removing ``files`` would give back, estimated.

    The entries' ``stored_size`` (hard links count nothing), except above a Dedup layer,
    where chunks are shared and the entries say nothing about them: there the files' logical
    bytes times :func:`stored_fraction` (pass it as ``fraction`` to ask the layer once).
    """
    if fraction is _UNSET:
        fraction = stored_fraction(fs)
    if fraction is not None:
        return int(sum(f.size for f in files) * fraction)
    return sum(0 if (f.entry.get("nlink") or 1) > 1 else f.stored_size for f in files)
