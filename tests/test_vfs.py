"""The mount's VFS without the kernel: handles, write-back, caches, errno mapping."""

from __future__ import annotations

import errno
import os

import fsspec
import pytest

from aiofs.backends.local import LocalBackend
from aiofs.errors import AuthenticationFailed, FileTooLarge, IntegrityError, ReadOnly, StorageQuotaExceeded
from aiofs.layer import Layer
from aiofs.mount.vfs import VFS, FsError


@pytest.fixture
def vfs(tmp_path):
    return VFS(LocalBackend(str(tmp_path / "store")), attr_ttl=60, dir_ttl=60)


def test_write_back_happens_on_flush(vfs, tmp_path):
    fh = vfs.create("/a.txt")
    vfs.write(fh, b"hello", 0)
    assert not (tmp_path / "store" / "a.txt").exists()  # still in the temp file
    assert vfs.getattr("/a.txt")["st_size"] == 5
    assert [name for name, _ in vfs.readdir("/")] == ["a.txt"]
    vfs.flush(fh)
    assert (tmp_path / "store" / "a.txt").read_bytes() == b"hello"
    vfs.release(fh)
    assert vfs.getattr("/a.txt")["st_size"] == 5  # cache invalidated by our own change


def test_handles_share_one_node_and_read_ahead(vfs):
    data = os.urandom(3 << 20)
    vfs.fs.pipe_file("/big", data)
    reader = vfs.open("/big", os.O_RDONLY)
    chunks = [vfs.read(reader, 128 << 10, off) for off in range(0, len(data), 128 << 10)]
    assert b"".join(chunks) == data
    writer = vfs.open("/big", os.O_RDWR)
    vfs.write(writer, b"XY", 10)
    assert vfs.read(reader, 4, 9) == data[9:10] + b"XY" + data[12:13]
    vfs.release(writer)
    vfs.release(reader)
    assert vfs.fs.cat_file("/big", 8, 13) == data[8:10] + b"XY" + data[12:13]


def test_cache_is_invalidated_by_own_changes_only(vfs):
    vfs.mkdir("/d")
    assert vfs.readdir("/d") == []
    vfs.fs.pipe_file("/d/outside", b"x")  # a change behind the mount's back: cached for dir_ttl
    assert vfs.readdir("/d") == []
    fh = vfs.create("/d/inside")
    vfs.release(fh)
    assert [name for name, _ in vfs.readdir("/d")] == ["inside", "outside"]


def test_namespace_errors(vfs):
    with pytest.raises(FsError) as info:
        vfs.getattr("/nope")
    assert info.value.errno == errno.ENOENT
    vfs.mkdir("/d")
    vfs.release(vfs.create("/d/f"))
    with pytest.raises(FsError) as info:
        vfs.rmdir("/d")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FsError) as info:
        vfs.mkdir("/d")
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FsError) as info:
        vfs.create("/d/f/g")
    assert info.value.errno == errno.ENOTDIR
    ro = VFS(vfs.fs, read_only=True)
    with pytest.raises(FsError) as info:
        ro.create("/x")
    assert info.value.errno == errno.EROFS


def test_statfs_uses_a_statfs_capability_else_the_disk(vfs):
    assert vfs.statfs()["f_blocks"] > 0

    class WithQuota(Layer):
        def statfs(self):
            return {"total": 1 << 20, "used": 1 << 18, "free": 3 << 18, "files": 1,
                    "files_total": 10, "files_free": 9}

    stats = VFS(Layer(fs=WithQuota(fs=vfs.fs))).statfs()
    assert stats["f_blocks"] * stats["f_frsize"] == 1 << 20
    assert stats["f_bavail"] * stats["f_frsize"] == 3 << 18
    assert stats["f_ffree"] == 9
    memory = VFS(fsspec.filesystem("memory")).statfs()
    assert memory["f_blocks"] > 0


def test_errno_table():
    from aiofs.mount.fuse import errno_of

    assert errno_of(StorageQuotaExceeded("full")) == errno.EDQUOT
    assert errno_of(FileTooLarge("big")) == errno.EFBIG
    assert errno_of(IntegrityError("bad tag")) == errno.EIO
    assert errno_of(AuthenticationFailed("expired")) == errno.EACCES
    assert errno_of(ReadOnly("ro")) == errno.EROFS
    assert errno_of(FileNotFoundError("x")) == errno.ENOENT
    assert errno_of(OSError(errno.ENOSPC, "disk full")) == errno.ENOSPC
    assert errno_of(RuntimeError("bug")) == errno.EIO
