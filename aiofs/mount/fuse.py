"""The FUSE face of the mount: mfusepy over libfuse3, operations mapped to :class:`VFS` calls.

Thin on purpose: every operation is one VFS call, and every exception becomes an errno
through one table (:data:`ERRNO_BY_CODE`, built on :mod:`aiofs.errors`). libfuse3 is forced
(``FUSE_LIBRARY_PATH``) before mfusepy is imported: with libfuse2 the kernel sends 4 KiB
writes and option names differ.

Kernel caching: attributes and entries are cached for ``attr_timeout`` / ``entry_timeout``
seconds, and ``auto_cache`` keeps a file's page cache across opens while its size and mtime
are unchanged (libfuse sets ``keep_cache`` on such an open). libfuse3 negotiates big writes
by itself (``max_write`` is left alone: above 128 KiB libfuse 3.14 fails with "reading
device: Invalid argument"). mfusepy runs multithreaded, and operations get the raw
``fuse_file_info`` (``raw_fi``: no per-call signature inspection in mfusepy's ``create``).

The kernel writeback cache stays off. Tried twice (libfuse 3.14, ``FUSE_CAP_WRITEBACK_CACHE``
in ``init``): bytes written to a file still open when SIGTERM arrives stay in the kernel's
page cache and never reach the daemon (the loop has stopped before the unmount writes them
back), so the file lands empty; without it the same bytes are already in the VFS and
``destroy`` writes them. The first attempt also gave ESTALE/EIO in the model test. The
benchmark's 1 MiB writes would not gain from it either.
"""

from __future__ import annotations

import ctypes.util
import errno
import functools
import logging
import os
import time

from aiofs.errors import ERROR_TABLE, code_for, errno_for
from aiofs.mount.vfs import VFS, FsError

log = logging.getLogger("aiofs.mount")

_LIBFUSE3_CANDIDATES = (
    "/lib/x86_64-linux-gnu/libfuse3.so.3",
    "/usr/lib/x86_64-linux-gnu/libfuse3.so.3",
    "/lib/aarch64-linux-gnu/libfuse3.so.3",
    "/usr/lib/aarch64-linux-gnu/libfuse3.so.3",
    "/usr/lib/libfuse3.so.3",
    "/usr/lib64/libfuse3.so.3",
)

# aiofs error code -> errno the mount returns. Built from the one error table; the rows the
# mount cares most about are spelled out so a change to the table cannot silently move them.
ERRNO_BY_CODE: dict[str, int] = {code: row.errno for code, row in ERROR_TABLE.items()} | {
    "STORAGE_QUOTA_EXCEEDED": errno.EDQUOT,
    "FILE_TOO_LARGE": errno.EFBIG,
    "INTEGRITY_ERROR": errno.EIO,
    "AUTHENTICATION_FAILED": errno.EACCES,
    "READ_ONLY": errno.EROFS,
    "RESERVED_PATH": errno.EACCES,
}


def errno_of(exc: BaseException) -> int:
    """The errno the mount returns for any exception."""
    if isinstance(exc, FsError):
        return exc.errno
    if getattr(exc, "code", None) in ERRNO_BY_CODE:
        return ERRNO_BY_CODE[exc.code]
    number = errno_for(exc)
    if number == ERROR_TABLE["INTERNAL_ERROR"].errno and code_for(exc) == "INTERNAL_ERROR":
        log.warning("unexpected error in the mount: %r", exc, exc_info=exc)
    return number


def find_libfuse3() -> str | None:
    """The path of libfuse3's shared library, if installed."""
    for candidate in _LIBFUSE3_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    return ctypes.util.find_library("fuse3")


def load_mfusepy():
    """Import mfusepy bound to libfuse3 (sets ``FUSE_LIBRARY_PATH`` first)."""
    if "FUSE_LIBRARY_PATH" not in os.environ:
        path = find_libfuse3()
        if path is None:
            raise RuntimeError("libfuse3 is not installed: apt-get install fuse3")
        os.environ["FUSE_LIBRARY_PATH"] = path
    import mfusepy

    if getattr(mfusepy, "fuse_version_major", 3) != 3:
        raise RuntimeError("mfusepy loaded libfuse2; set FUSE_LIBRARY_PATH to libfuse3.so.3")
    return mfusepy


def _translated(method):
    """Run a VFS call; raise ``FuseOSError(errno)`` for any failure."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except self.FuseOSError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an errno
            raise self.FuseOSError(errno_of(exc)) from exc

    return wrapper


def make_operations(vfs: VFS, attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                    negative_timeout: float = 0.0, kernel_cache: bool = True):
    """An mfusepy ``Operations`` object serving ``vfs``."""
    mfusepy = load_mfusepy()

    class Operations(mfusepy.Operations):
        use_ns = False
        FuseOSError = mfusepy.FuseOSError

        def init_with_config(self, conn, config):
            if config is not None:
                config.attr_timeout = attr_timeout
                config.entry_timeout = entry_timeout
                config.negative_timeout = negative_timeout
                config.auto_cache = 1 if kernel_cache else 0
                config.hard_remove = 1  # the VFS keeps unlinked open files itself
                config.use_ino = 0

        def destroy(self, path):
            for name, exc in vfs.close():
                log.error("could not write %s on unmount: %s", name, exc)

        # raw_fi: open/create/read/write/... get the fuse_file_info itself (its ``fh``): no
        # per-call signature inspection in mfusepy's create, and per-open flags are ours.

        @_translated
        def getattr(self, path, fi=None):
            return vfs.getattr(path, None if fi is None else fi.fh)

        @_translated
        def readdir(self, path, fh):
            return [".", ".."] + [(name, attrs, 0) for name, attrs in vfs.readdir(path)]

        @_translated
        def statfs(self, path):
            return vfs.statfs()

        @_translated
        def mkdir(self, path, mode):
            vfs.mkdir(path, mode)

        @_translated
        def rmdir(self, path):
            vfs.rmdir(path)

        @_translated
        def unlink(self, path):
            vfs.unlink(path)

        @_translated
        def rename(self, old, new):
            vfs.rename(old, new)

        @_translated
        def chmod(self, path, mode):
            vfs.chmod(path, mode)

        @_translated
        def chown(self, path, uid, gid):
            vfs.chown(path, uid, gid)

        @_translated
        def utimens(self, path, times=None):
            vfs.utimens(path, times)

        @_translated
        def create(self, path, mode, fi):
            fi.fh = vfs.create(path, mode, fi.flags)
            return 0

        @_translated
        def open(self, path, fi):
            fi.fh = vfs.open(path, fi.flags)
            return 0

        @_translated
        def read(self, path, size, offset, fi):
            return vfs.read(fi.fh, size, offset)

        @_translated
        def write(self, path, data, offset, fi):
            return vfs.write(fi.fh, data, offset)

        @_translated
        def truncate(self, path, length, fi=None):
            vfs.truncate(path, length, None if fi is None else fi.fh)

        @_translated
        def flush(self, path, fi):
            vfs.flush(fi.fh)

        @_translated
        def fsync(self, path, datasync, fi):
            vfs.fsync(fi.fh, bool(datasync))

        @_translated
        def release(self, path, fi):
            vfs.release(fi.fh)

        def access(self, path, amode):
            if amode & os.W_OK and vfs.read_only:
                raise self.FuseOSError(errno.EROFS)
            return 0

    return Operations()


UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _fuse_class(mfusepy):
    """mfusepy's ``FUSE`` with a ``truncate`` that passes the handle of ``ftruncate`` and a
    ``utimens`` that keeps ``UTIME_NOW``/``UTIME_OMIT``.

    mfusepy turns libfuse3's two ``timespec`` into float seconds (or nanoseconds), which
    loses the two special ``tv_nsec`` values (``touch -m`` omits the access time; libfuse
    leaves ``tv_sec`` undefined for them). Here: nanoseconds, ``None`` for an omitted time.
    """

    class FUSE(mfusepy.FUSE):
        def truncate_fuse_3(self, path, length, fip):
            # mfusepy drops the file info: ftruncate(fd) would look like truncate(path),
            # which writes the file to the stack at once instead of on close(2).
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.truncate(decoded, length, fip.contents if fip else None)

        def utimens_fuse_3(self, path, buf, fip):
            times = None
            if buf:
                parts = []
                for ts in (buf.contents.actime, buf.contents.modtime):
                    if ts.tv_nsec == UTIME_OMIT:
                        parts.append(None)
                    elif ts.tv_nsec == UTIME_NOW:
                        parts.append(time.time_ns())
                    else:
                        parts.append(ts.tv_sec * 10**9 + ts.tv_nsec)
                times = tuple(parts)
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.utimens(decoded, times)

    return FUSE


def run_mount(fs, mountpoint: str, *, name: str = "aiofs", read_only: bool = False,
              allow_other: bool = False, attr_timeout: float = 1.0, entry_timeout: float = 1.0,
              dir_cache_ttl: float = 1.0, read_ahead: int = 8 << 20, kernel_cache: bool = True,
              temp_dir: str | None = None, debug: bool = False) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve until unmounted or SIGINT/SIGTERM/SIGHUP.

    libfuse installs its own SIGINT/SIGTERM/SIGHUP handlers: the loop ends, the kernel mount
    is removed and ``destroy`` writes every pending file to the stack before returning.
    """
    mfusepy = load_mfusepy()
    vfs = VFS(fs, read_only=read_only, attr_ttl=attr_timeout, dir_ttl=dir_cache_ttl,
              read_ahead=read_ahead, temp_dir=temp_dir)
    operations = make_operations(vfs, attr_timeout=attr_timeout, entry_timeout=entry_timeout,
                                 kernel_cache=kernel_cache)
    options = {"fsname": f"aiofs:{name}", "subtype": "aiofs", "noatime": True}
    if read_only:
        options["ro"] = True
    if allow_other:
        options["allow_other"] = True
    try:
        _fuse_class(mfusepy)(operations, mountpoint, foreground=True, nothreads=False,
                             debug=debug, raw_fi=True, **options)
    except RuntimeError as exc:
        # libfuse3's fuse_main returns 8 when its loop was ended by SIGINT/SIGTERM/SIGHUP;
        # the mount is gone and destroy() has flushed: a clean stop, not an error.
        from aiofs.mount import is_mounted

        if exc.args != (8,) or is_mounted(mountpoint):
            raise
    finally:
        vfs.close()
