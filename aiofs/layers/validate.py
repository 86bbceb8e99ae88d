"""``Validate``: upload validation from content (magic bytes), before data lands.

``Validate(fs=target, allowed=None)``

The type of a file is detected from its first bytes with ``filetype`` (magic numbers), not
from its name. Policy, in this order:

1. **Content that contradicts its extension is rejected** (``INVALID_FILE_TYPE``): a
   ``.png`` whose bytes are an ELF binary, a ``.pdf`` that is a zip. Extensions of one
   container family are interchangeable (``.docx``/``.xlsx``/``.zip``/``.epub``,
   ``.mp4``/``.m4v``/``.m4a``/``.mov``, ``.jpg``/``.jpeg``, ``.mkv``/``.webm``...).
2. **A signature is required where the format always has one**: a non-empty ``.png``,
   ``.jpg``, ``.gif``, ``.webp``, ``.bmp``, ``.pdf``, ``.zip`` (and Office Open XML),
   ``.gz``, ``.7z``... without it is rejected (``STRICT_EXTENSIONS``).
3. **Allow-list** (``allowed=[...]``, default ``None``: every type): content with a
   recognised signature must match an entry; so must a known signature-bearing extension
   whose content has no signature. Entries are categories (``"image"``, ``"video"``,
   ``"audio"``, ``"document"``, ``"archive"``, ``"font"``, ``"executable"``, ``"data"``;
   plurals work too), MIME types (``"image/png"``, ``"image/*"``) or extensions
   (``".png"``).
4. **Everything else is accepted**: content with no recognisable signature and an unknown or
   plain extension (``.txt``, ``.py``, ``.csv``, ``.bin``, no extension), because a mounted
   drive must hold arbitrary files. Code and text have no magic bytes, so ``"code"`` and
   ``"text"`` in an allow-list are accepted names that change nothing. Empty files are
   accepted.

The check runs on the first ``SNIFF_BYTES`` (8 KiB) of a write: ``pipe_file``/``pipe``/
``put_file`` check before calling the target; a streaming write (``open('wb')``) holds its
first 8 KiB in memory and checks them before a byte goes down; ``cp_file`` and ``mv`` check
the source's first bytes against the destination's extension. Appends are not re-checked.
Reads pass through untouched.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
from typing import Any

import filetype
import fsspec
from fsspec.spec import AbstractFileSystem

from aiofs.errors import InvalidArgument, InvalidFileType
from aiofs.layer import ATOMIC_WRITES, Layer, WriteOnlyFile, has_glob, refuse_internal_write

__all__ = ["Validate", "detect", "check_content", "CATEGORIES", "STRICT_EXTENSIONS", "SNIFF_BYTES"]

def _declared_atomic(fs) -> bool:
    """True for targets that declare atomic writes (aiofs backends and layers over them):
    a discarded write leaves nothing there, so the writer needs not know if the file existed.
    """
    declared = getattr(fs, "capabilities", None)
    return isinstance(declared, frozenset) and ATOMIC_WRITES in declared


SNIFF_BYTES = 8192  # filetype reads at most this many bytes (most signatures need 262)

_DOCUMENT_ARCHIVES = {"pdf", "rtf", "epub", "ps"}
_EXECUTABLES = {"exe", "elf", "wasm", "swf", "nes", "crx", "deb", "rpm"}
_DATA = {"sqlite", "dcm"}


def _category_of_matcher(group: str, ext: str) -> str:
    if group == "archive":
        if ext in _DOCUMENT_ARCHIVES:
            return "document"
        if ext in _EXECUTABLES:
            return "executable"
        if ext in _DATA:
            return "data"
        return "archive"
    if group == "application":
        return "executable"
    if ext == "dwg":
        return "document"
    return group


# extension (as filetype names it) -> (mime, category)
KNOWN: dict[str, tuple[str, str]] = {}
for _group in ("image", "video", "audio", "font", "document", "archive", "application"):
    for _m in getattr(filetype, f"{_group}_matchers"):
        KNOWN.setdefault(_m.extension.lower(), (_m.mime, _category_of_matcher(_group, _m.extension.lower())))

CATEGORIES = ("image", "video", "audio", "document", "archive", "font", "executable", "data",
              "code", "text")

# other spellings of an extension -> filetype's name
_ALIASES = {
    "jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tiff": "tif", "mid": "midi", "oga": "ogg",
    "ogv": "ogg", "opus": "ogg", "spx": "ogg", "tgz": "gz", "tbz2": "bz2", "txz": "xz",
    "htm": None, "aif": "aiff", "jp2": "jpx", "3g2": "3gp", "qt": "mov", "mpeg": "mpg",
    "docm": "docx", "xlsm": "xlsx", "pptm": "pptx", "jar": "zip", "apk": "zip", "whl": "zip",
    "dll": "exe", "sys": "exe", "msi": "doc", "so": "elf", "ttc": "ttf", "heif": "heic",
    "db": "sqlite", "sqlite3": "sqlite", "tar": "tar", "dcm": "dcm",
}
_ALIASES = {k: v for k, v in _ALIASES.items() if v is not None}

# Formats sharing one container: any spelling may hold any of them.
_FAMILIES = [
    {"zip", "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub", "crx"},
    {"doc", "xls", "ppt"},                        # OLE compound files
    {"mp4", "m4v", "m4a", "mov", "3gp"},          # ISO base media
    {"heic", "avif"},
    {"mkv", "webm"},
    {"png", "apng"},
    {"jpg", "jpx"},
    {"tif", "cr2"},                               # TIFF-based raw files
    {"ttf", "otf"},
    {"exe", "eot"},
    {"ar", "deb"},
    {"dcm"},
]
_FAMILY_OF = {ext: i for i, family in enumerate(_FAMILIES) for ext in family}

# Non-empty files with these extensions must carry the format's signature.
STRICT_EXTENSIONS = frozenset({
    "png", "apng", "jpg", "gif", "webp", "bmp", "pdf", "zip", "docx", "xlsx", "pptx", "odt",
    "ods", "odp", "epub", "gz", "bz2", "7z", "xz", "zst", "rar", "woff", "woff2", "flac",
})


def _normal_ext(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    return _ALIASES.get(ext, ext)


def extension_of(path: str) -> str:
    """The extension of a path as this module names it (``""`` if none)."""
    name = posixpath.basename(str(path).rstrip("/"))
    if "." not in name.strip("."):
        return ""
    return _normal_ext(name.rsplit(".", 1)[1])


def detect(head: bytes) -> tuple[str, str, str] | None:
    """``(extension, mime, category)`` of content from its first bytes; ``None`` if unknown."""
    if not head:
        return None
    kind = filetype.guess(bytes(head[:SNIFF_BYTES]))
    if kind is None:
        return None
    ext = kind.extension.lower()
    mime, category = KNOWN.get(ext, (kind.mime, "data"))
    return ext, kind.mime, category


def _compatible(detected_ext: str, path_ext: str) -> bool:
    if detected_ext == path_ext:
        return True
    a, b = _FAMILY_OF.get(detected_ext), _FAMILY_OF.get(path_ext)
    return a is not None and a == b


def _parse_allowed(allowed) -> frozenset[str] | None:
    if allowed is None:
        return None
    if isinstance(allowed, str):
        allowed = [a for a in allowed.replace(",", " ").split() if a]
    out = set()
    for entry in allowed:
        if not isinstance(entry, str) or not entry.strip():
            raise InvalidArgument(f"allowed: entries are categories, MIME types or extensions, got {entry!r}")
        entry = entry.strip().lower()
        if "/" in entry:
            out.add(entry)
        elif entry.startswith("."):
            out.add("." + _normal_ext(entry))
        else:
            singular = entry[:-1] if entry.endswith("s") and entry[:-1] in CATEGORIES else entry
            if singular not in CATEGORIES:
                raise InvalidArgument(
                    f"allowed: unknown category {entry!r} (categories: {', '.join(CATEGORIES)}; "
                    f"or a MIME type like 'image/png', or an extension like '.png')")
            out.add(singular)
    return frozenset(out)


def _is_allowed(allowed: frozenset[str], ext: str, mime: str, category: str) -> bool:
    return (category in allowed or mime in allowed or f"{mime.split('/')[0]}/*" in allowed
            or f".{ext}" in allowed)


def check_content(path: str, head: bytes, allowed: frozenset[str] | None = None) -> dict | None:
    """Raise ``INVALID_FILE_TYPE`` if ``head`` (the first bytes of ``path``) is refused.

    Returns what was detected (``{"extension", "mime", "category"}``) or ``None``.
    """
    path_ext = extension_of(path)
    found = detect(head)
    if found is not None:
        ext, mime, category = found
        if path_ext in KNOWN and not _compatible(ext, path_ext):
            expected = KNOWN[path_ext][0]
            raise InvalidFileType(
                f"content of {path!r} is {mime} (.{ext}), which contradicts its extension "
                f".{path_ext} (expected {expected})", path)
        if allowed is not None and not _is_allowed(allowed, ext, mime, category):
            raise InvalidFileType(
                f"{path!r} is {mime} (.{ext}, {category}), which is not an allowed type "
                f"(allowed: {', '.join(sorted(allowed))})", path)
        return {"extension": ext, "mime": mime, "category": category}
    if head and path_ext in STRICT_EXTENSIONS:
        raise InvalidFileType(
            f"content of {path!r} has no {KNOWN[path_ext][0]} signature, which its extension "
            f".{path_ext} requires (detected: unknown content)", path)
    if head and allowed is not None and path_ext in KNOWN:
        mime, category = KNOWN[path_ext]
        if not _is_allowed(allowed, path_ext, mime, category):
            raise InvalidFileType(
                f"{path!r} has the extension of {mime} ({category}), which is not an allowed "
                f"type (allowed: {', '.join(sorted(allowed))})", path)
    return None


class Validate(Layer):
    """Rejects uploads whose content contradicts their name or is not allowed (module doc)."""

    protocol = "aiofs-validate"

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict | None = None,
        allowed: list[str] | str | None = None,
        **options: Any,
    ):
        super().__init__(fs=fs, target_protocol=target_protocol, target_options=target_options,
                         **options)
        self.allowed = _parse_allowed(allowed)

    def check(self, path: str, head: bytes) -> dict | None:
        """Validate ``head`` (first bytes) for ``path``; raises ``INVALID_FILE_TYPE``."""
        return check_content(self._strip_protocol(path), head, self.allowed)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "r" in mode or "a" in mode:
            return super()._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                                 cache_options=cache_options, **kwargs)
        refuse_internal_write(path)
        existed = _declared_atomic(self.fs) or self.fs.isfile(path)
        target = self.fs._open(path, mode=mode, block_size=block_size, autocommit=autocommit,
                               cache_options=cache_options, **kwargs)
        return ValidatingWriter(self, path, target, existed)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        refuse_internal_write(path)
        self.check(path, value[:SNIFF_BYTES])
        return self.fs.pipe_file(path, value, mode=mode, **kwargs)

    def pipe(self, path, value=None, **kwargs):
        if isinstance(path, str):
            path = {path: value}
        prefix = f"{self.protocol}://"
        path = {type(self)._strip_protocol(k) if isinstance(k, str) and k.startswith(prefix) else k: v
                for k, v in path.items()}
        for p, v in path.items():  # the whole batch is checked before anything is written
            refuse_internal_write(p)
            self.check(p, v[:SNIFF_BYTES])
        return self.fs.pipe(path, **kwargs)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        refuse_internal_write(rpath)
        if not os.path.isdir(lpath):
            with open(lpath, "rb") as f:
                self.check(rpath, f.read(SNIFF_BYTES))
        return self.fs.put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)

    def _check_copy(self, path1, path2) -> None:
        if extension_of(path1) == extension_of(path2):
            return  # same name type: the content was checked when it was written
        if self.fs.isfile(path1):
            self.check(path2, self.fs.cat_file(path1, start=0, end=SNIFF_BYTES))

    def cp_file(self, path1, path2, **kwargs):
        refuse_internal_write(path2)
        self._check_copy(path1, path2)
        return super().cp_file(path1, path2, **kwargs)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        if isinstance(path1, str) and not has_glob(path1) and not self.fs.isdir(path2):
            refuse_internal_write(path1)
            refuse_internal_write(path2)
            self._check_copy(path1, path2)
        elif isinstance(path1, list) or has_glob(path1):
            return AbstractFileSystem.mv(self, path1, path2, recursive=recursive,
                                         maxdepth=maxdepth, **kwargs)
        return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)


class ValidatingWriter(WriteOnlyFile, io.BufferedIOBase):
    """Holds the first ``SNIFF_BYTES`` of a streaming write, checks them, then passes through."""

    SEEKABLE = True

    def __init__(self, layer: Validate, path: str, target, existed: bool):
        super().__init__()
        self.layer, self.path, self.target, self.existed = layer, path, target, existed
        self._head: bytearray | None = bytearray()
        self._done = False

    def tell(self) -> int:
        return len(self._head) if self._head is not None else self.target.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self._release_head()
        return self.target.seek(offset, whence)

    def write(self, data) -> int:
        if self._done:
            raise ValueError("I/O operation on closed file")
        if self._head is None:
            return self.target.write(data)
        view = memoryview(data).cast("B")
        self._head += view
        if len(self._head) >= SNIFF_BYTES:
            self._release_head()
        return len(view)

    def _release_head(self) -> None:
        if self._head is None:
            return
        try:
            self.layer.check(self.path, bytes(self._head[:SNIFF_BYTES]))
        except BaseException:
            self.discard()
            raise
        head, self._head = self._head, None
        if head:
            self.target.write(head)

    def flush(self) -> None:
        if self._head is None and not self._done:
            self.target.flush()

    def close(self) -> None:
        if self._done:
            return
        self._release_head()
        self._done = True
        try:
            self.target.close()
        finally:
            super().close()

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        self._head = None
        try:
            discard = getattr(self.target, "discard", None)
            if discard is not None:
                discard()
            else:
                self.target.close()
            if not self.existed:  # targets that create the object at open (memory)
                with contextlib.suppress(OSError):
                    if self.layer.fs.isfile(self.path):
                        self.layer.fs.rm_file(self.path)
        finally:
            super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            if not self._done:
                self.discard()
