"""The error table: codes, errno, HTTP status, JSON bodies and built-in compatibility."""

from __future__ import annotations

import errno
import json
import pickle

import pytest

from aiofs import errors
from aiofs.errors import (
    ERROR_CLASSES, ERROR_TABLE, AiofsError, code_for, error_body, errno_for, http_status_for,
)

REQUIRED_CODES = {
    "STORAGE_QUOTA_EXCEEDED", "FILE_TOO_LARGE", "INVALID_FILE_TYPE", "SYNC_FAILED",
    "AUTHENTICATION_FAILED", "INTEGRITY_ERROR", "VERSION_NOT_FOUND", "CONFLICT",
    "RATE_LIMITED", "NOT_FOUND", "RESERVED_PATH", "INVALID_PATH", "NAME_TOO_LONG",
}


def test_table_has_the_documented_codes():
    assert REQUIRED_CODES <= set(ERROR_TABLE)


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_code_has_errno_status_title_and_class(code):
    row = ERROR_TABLE[code]
    assert row.code == code
    assert isinstance(row.errno, int) and row.errno in errno.errorcode
    assert 400 <= row.http_status <= 599
    assert row.title.strip()
    cls = ERROR_CLASSES[code]
    assert issubclass(cls, AiofsError) and issubclass(cls, OSError)
    assert cls.code == code and cls.__doc__


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_instances_carry_their_row(code):
    cls = ERROR_CLASSES[code]
    exc = cls("something specific went wrong", "dir/file.txt")
    row = ERROR_TABLE[code]
    assert exc.code == code
    assert exc.errno == row.errno
    assert exc.http_status == row.http_status
    assert exc.filename == "dir/file.txt"
    assert "something specific went wrong" in str(exc) and code in str(exc)
    assert code_for(exc) == code
    assert errno_for(exc) == row.errno
    assert http_status_for(exc) == row.http_status


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_to_dict_is_the_json_body(code):
    exc = ERROR_CLASSES[code]("detail text")
    body = exc.to_dict()
    assert body == {
        "success": False,
        "error": ERROR_TABLE[code].title,
        "detail": "detail text",
        "code": code,
    }
    assert json.loads(json.dumps(body)) == body
    assert error_body(exc) == body


def test_default_detail_is_the_title():
    exc = errors.Conflict()
    assert exc.detail == "Conflict"
    assert exc.to_dict()["detail"] == "Conflict"
    assert exc.filename is None


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_errors_pickle(code):
    # Errors cross process boundaries (dask workers, multiprocessing pools).
    exc = ERROR_CLASSES[code]("lost in transit", "a/b")
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc)
    assert (clone.code, clone.detail, clone.filename, clone.errno) == (
        code, "lost in transit", "a/b", exc.errno
    )
    assert clone.to_dict() == exc.to_dict()


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.NotFound, FileNotFoundError),
        (errors.VersionNotFound, FileNotFoundError),
        (errors.AlreadyExists, FileExistsError),
        (errors.IsADirectory, IsADirectoryError),
        (errors.NotADirectory, NotADirectoryError),
        (errors.ReservedPath, PermissionError),
        (errors.PermissionDenied, PermissionError),
        (errors.ReadOnly, PermissionError),
        (errors.AuthenticationFailed, PermissionError),
        (errors.InvalidPath, ValueError),
        (errors.NameTooLong, ValueError),
        (errors.InvalidArgument, ValueError),
        (errors.ConfigError, ValueError),
        (errors.Unsupported, NotImplementedError),
        (errors.BackendUnavailable, ConnectionError),
        (errors.Timeout, TimeoutError),
    ],
)
def test_builtin_exception_compatibility(cls, builtin):
    with pytest.raises(builtin):
        raise cls("compatible")
    assert issubclass(cls, OSError)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (FileNotFoundError("x"), "NOT_FOUND"),
        (OSError(errno.ENOENT, "made by errno"), "NOT_FOUND"),
        (FileExistsError("x"), "ALREADY_EXISTS"),
        (IsADirectoryError("x"), "IS_A_DIRECTORY"),
        (NotADirectoryError("x"), "NOT_A_DIRECTORY"),
        (PermissionError("x"), "PERMISSION_DENIED"),
        (TimeoutError("x"), "TIMEOUT"),
        (ConnectionRefusedError("x"), "BACKEND_UNAVAILABLE"),
        (NotImplementedError("x"), "UNSUPPORTED"),
        (ValueError("x"), "INVALID_ARGUMENT"),
        (OSError(errno.ENOTEMPTY, "x"), "DIRECTORY_NOT_EMPTY"),
        (OSError(errno.ENAMETOOLONG, "x"), "NAME_TOO_LONG"),
        (OSError(errno.EROFS, "x"), "READ_ONLY"),
        (OSError(errno.ENOSPC, "x"), "STORAGE_QUOTA_EXCEEDED"),
        (OSError(errno.EDQUOT, "x"), "STORAGE_QUOTA_EXCEEDED"),
        (OSError(errno.EFBIG, "x"), "FILE_TOO_LARGE"),
        (OSError(errno.EIO, "x"), "INTERNAL_ERROR"),
        (KeyError("x"), "INTERNAL_ERROR"),
        (RuntimeError("x"), "INTERNAL_ERROR"),
        (errors.ReservedPath("x"), "RESERVED_PATH"),
        (errors.VersionNotFound("x"), "VERSION_NOT_FOUND"),  # its own code, not NOT_FOUND
        (errors.Timeout("x"), "TIMEOUT"),
    ],
)
def test_code_for(exc, code):
    assert code_for(exc) == code


def test_unknown_code_attribute_is_ignored():
    exc = RuntimeError("foreign")
    exc.code = "SOMETHING_ELSE"  # e.g. an HTTP library's own code attribute
    assert code_for(exc) == "INTERNAL_ERROR"
    other = ValueError("x")
    other.code = 404
    assert code_for(other) == "INVALID_ARGUMENT"


def test_errno_for_keeps_an_os_errno():
    assert errno_for(OSError(errno.EXDEV, "cross-device")) == errno.EXDEV
    assert errno_for(errors.NotFound("x")) == errno.ENOENT
    assert errno_for(errors.ReservedPath("x")) == errno.EACCES
    assert errno_for(ValueError("x")) == errno.EINVAL
    assert errno_for(RuntimeError("x")) == errno.EIO


def test_http_status_and_body_for_builtins():
    assert http_status_for(FileNotFoundError("gone")) == 404
    assert http_status_for(PermissionError("no")) == 403
    assert http_status_for(RuntimeError("bug")) == 500
    body = error_body(FileExistsError("a.txt exists"))
    assert body == {
        "success": False, "error": "Already exists", "detail": "a.txt exists",
        "code": "ALREADY_EXISTS",
    }


def test_message_reads_code_then_detail_without_errno_noise():
    from aiofs.errors import NotFound

    assert str(NotFound("no such file: 'a.txt'", "a.txt")) == "[NOT_FOUND] no such file: 'a.txt'"
    assert str(NotFound("gone", "b.txt")) == "[NOT_FOUND] gone: 'b.txt'"
