"""The single aiofs error table: every error code with its errno and HTTP status.

Every aiofs error is an ``OSError`` subclass carrying a ``code`` from ``ERROR_TABLE``.
Errors that mean the same as a built-in exception also subclass it, so
``except FileNotFoundError`` keeps working for callers that know nothing of aiofs.
The FUSE mount maps errors to ``errno``; the HTTP API maps them to ``http_status`` and the
JSON body of :meth:`AiofsError.to_dict`.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    """One row of the error table."""

    code: str
    errno: int
    http_status: int
    title: str


def _rows(*rows: tuple[str, int, int, str]) -> dict[str, ErrorCode]:
    return {code: ErrorCode(code, num, status, title) for code, num, status, title in rows}


ERROR_TABLE: dict[str, ErrorCode] = _rows(
    # code                      errno                 HTTP  title
    ("NOT_FOUND",               _errno.ENOENT,        404, "Not found"),
    ("ALREADY_EXISTS",          _errno.EEXIST,        409, "Already exists"),
    ("IS_A_DIRECTORY",          _errno.EISDIR,        409, "Is a directory"),
    ("NOT_A_DIRECTORY",         _errno.ENOTDIR,       409, "Not a directory"),
    ("DIRECTORY_NOT_EMPTY",     _errno.ENOTEMPTY,     409, "Directory not empty"),
    ("INVALID_PATH",            _errno.EINVAL,        400, "Invalid path"),
    ("NAME_TOO_LONG",           _errno.ENAMETOOLONG,  400, "Name too long"),
    ("RESERVED_PATH",           _errno.EACCES,        403, "Reserved path"),
    ("PERMISSION_DENIED",       _errno.EACCES,        403, "Permission denied"),
    ("READ_ONLY",               _errno.EROFS,         403, "Read-only"),
    ("INVALID_ARGUMENT",        _errno.EINVAL,        400, "Invalid argument"),
    ("CONFIG_ERROR",            _errno.EINVAL,        400, "Configuration error"),
    ("UNSUPPORTED",             _errno.ENOTSUP,       501, "Operation not supported"),
    ("FILE_TOO_LARGE",          _errno.EFBIG,         413, "File too large"),
    ("STORAGE_QUOTA_EXCEEDED",  _errno.EDQUOT,        507, "Storage quota exceeded"),
    ("INVALID_FILE_TYPE",       _errno.EINVAL,        415, "Invalid file type"),
    ("INTEGRITY_ERROR",         _errno.EIO,           500, "Integrity check failed"),
    ("VERSION_NOT_FOUND",       _errno.ENOENT,        404, "Version not found"),
    ("CONFLICT",                _errno.EBUSY,         409, "Conflict"),
    ("RATE_LIMITED",            _errno.EAGAIN,        429, "Rate limited"),
    ("AUTHENTICATION_FAILED",   _errno.EACCES,        401, "Authentication failed"),
    ("SYNC_FAILED",             _errno.EIO,           503, "Sync failed"),
    ("BACKEND_UNAVAILABLE",     _errno.ENOTCONN,      503, "Backend unavailable"),
    ("TIMEOUT",                 _errno.ETIMEDOUT,     504, "Timed out"),
    ("INTERNAL_ERROR",          _errno.EIO,           500, "Internal error"),
)


class AiofsError(OSError):
    """Base of every aiofs error: an ``OSError`` with a ``code`` from ``ERROR_TABLE``."""

    code = "INTERNAL_ERROR"

    def __init__(self, detail: str = "", path: str | None = None):
        row = ERROR_TABLE[self.code]
        self.detail = detail or row.title
        message = f"[{self.code}] {self.detail}"
        if path is None:
            super().__init__(row.errno, message)
        else:
            super().__init__(row.errno, message, path)

    def __str__(self) -> str:
        # "[CODE] detail: 'path'" instead of OSError's "[Errno N] [CODE] detail: 'path'".
        text = f"[{self.code}] {self.detail}"
        if self.filename is not None and str(self.filename) not in self.detail:
            text += f": {self.filename!r}"
        return text

    def __reduce__(self):
        # OSError pickles as cls(errno, strerror, filename), which our signature does not
        # take: rebuild from (detail, path) so errors cross process boundaries intact.
        return (type(self), (self.detail, self.filename), self.__dict__)

    @property
    def http_status(self) -> int:
        """HTTP status the API answers with for this error."""
        return ERROR_TABLE[self.code].http_status

    def to_dict(self) -> dict:
        """The JSON body the HTTP API returns for this error."""
        return {
            "success": False,
            "error": ERROR_TABLE[self.code].title,
            "detail": self.detail,
            "code": self.code,
        }


class NotFound(AiofsError, FileNotFoundError):
    """A file, directory or object does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(AiofsError, FileExistsError):
    """The destination exists and the operation will not replace it."""

    code = "ALREADY_EXISTS"


class IsADirectory(AiofsError, IsADirectoryError):
    """A file operation was given a directory."""

    code = "IS_A_DIRECTORY"


class NotADirectory(AiofsError, NotADirectoryError):
    """A directory operation was given a file (or a path through a file)."""

    code = "NOT_A_DIRECTORY"


class DirectoryNotEmpty(AiofsError):
    """``rmdir`` of a directory that still has entries."""

    code = "DIRECTORY_NOT_EMPTY"


class InvalidPath(AiofsError, ValueError):
    """A path that is malformed: NUL bytes, invalid UTF-8, escaping the root."""

    code = "INVALID_PATH"


class NameTooLong(AiofsError, ValueError):
    """A path component longer than 255 bytes."""

    code = "NAME_TOO_LONG"


class ReservedPath(AiofsError, PermissionError):
    """A path under the reserved ``.aiofs/`` prefix, written from outside the stack."""

    code = "RESERVED_PATH"


class PermissionDenied(AiofsError, PermissionError):
    """The backend refused the operation."""

    code = "PERMISSION_DENIED"


class ReadOnly(AiofsError, PermissionError):
    """A write to something that is read-only."""

    code = "READ_ONLY"


class InvalidArgument(AiofsError, ValueError):
    """An argument that makes no sense for the call."""

    code = "INVALID_ARGUMENT"


class ConfigError(AiofsError, ValueError):
    """The configuration file or environment is wrong."""

    code = "CONFIG_ERROR"


class Unsupported(AiofsError, NotImplementedError):
    """The stack cannot do this (for example: its bottom lacks the capability)."""

    code = "UNSUPPORTED"


class FileTooLarge(AiofsError):
    """A file over the configured maximum size."""

    code = "FILE_TOO_LARGE"


class StorageQuotaExceeded(AiofsError):
    """Storing this would pass the storage quota."""

    code = "STORAGE_QUOTA_EXCEEDED"


class InvalidFileType(AiofsError):
    """Content that is not an allowed format, or contradicts its extension."""

    code = "INVALID_FILE_TYPE"


class IntegrityError(AiofsError):
    """Stored data failed verification (hash, tag, truncation)."""

    code = "INTEGRITY_ERROR"


class VersionNotFound(AiofsError, FileNotFoundError):
    """No version with that id exists for the file."""

    code = "VERSION_NOT_FOUND"


class Conflict(AiofsError):
    """The object changed underneath the operation."""

    code = "CONFLICT"


class RateLimited(AiofsError):
    """The backend asked us to slow down."""

    code = "RATE_LIMITED"


class AuthenticationFailed(AiofsError, PermissionError):
    """Credentials or keys are wrong or expired."""

    code = "AUTHENTICATION_FAILED"


class SyncFailed(AiofsError):
    """Data could not be synchronised with the remote (for example: offline, not cached)."""

    code = "SYNC_FAILED"


class BackendUnavailable(AiofsError, ConnectionError):
    """The backend cannot be reached."""

    code = "BACKEND_UNAVAILABLE"


class Timeout(AiofsError, TimeoutError):
    """The backend did not answer in time."""

    code = "TIMEOUT"


class InternalError(AiofsError):
    """A bug or an unexpected state inside aiofs."""

    code = "INTERNAL_ERROR"


ERROR_CLASSES: dict[str, type[AiofsError]] = {
    cls.code: cls for cls in AiofsError.__subclasses__()
}

# Built-in exceptions raised by fsspec and the OS, mapped to our codes (first match wins).
_BUILTIN_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (FileNotFoundError, "NOT_FOUND"),
    (FileExistsError, "ALREADY_EXISTS"),
    (IsADirectoryError, "IS_A_DIRECTORY"),
    (NotADirectoryError, "NOT_A_DIRECTORY"),
    (PermissionError, "PERMISSION_DENIED"),
    (TimeoutError, "TIMEOUT"),
    (ConnectionError, "BACKEND_UNAVAILABLE"),
    (NotImplementedError, "UNSUPPORTED"),
    (ValueError, "INVALID_ARGUMENT"),
)

_ERRNO_CODES: dict[int, str] = {
    _errno.ENOTEMPTY: "DIRECTORY_NOT_EMPTY",
    _errno.ENAMETOOLONG: "NAME_TOO_LONG",
    _errno.EROFS: "READ_ONLY",
    _errno.EDQUOT: "STORAGE_QUOTA_EXCEEDED",
    _errno.ENOSPC: "STORAGE_QUOTA_EXCEEDED",
    _errno.EFBIG: "FILE_TOO_LARGE",
    _errno.EINVAL: "INVALID_ARGUMENT",
}


def code_for(exc: BaseException) -> str:
    """The error code for any exception: its own ``code``, or the closest table entry."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in ERROR_TABLE:
        return code
    for exc_type, mapped in _BUILTIN_CODES:
        if isinstance(exc, exc_type):
            return mapped
    if isinstance(exc, OSError) and exc.errno in _ERRNO_CODES:
        return _ERRNO_CODES[exc.errno]
    return "INTERNAL_ERROR"


def errno_for(exc: BaseException) -> int:
    """The errno the FUSE mount returns for an exception."""
    if isinstance(exc, OSError) and not isinstance(exc, AiofsError) and exc.errno:
        return exc.errno
    return ERROR_TABLE[code_for(exc)].errno


def http_status_for(exc: BaseException) -> int:
    """The HTTP status the API returns for an exception."""
    return ERROR_TABLE[code_for(exc)].http_status


def error_body(exc: BaseException) -> dict:
    """The JSON error body for any exception."""
    if isinstance(exc, AiofsError):
        return exc.to_dict()
    code = code_for(exc)
    return {"success": False, "error": ERROR_TABLE[code].title, "detail": str(exc), "code": code}
