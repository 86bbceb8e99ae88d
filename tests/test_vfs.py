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


def test_small_files_stay_in_memory_large_ones_spill(vfs, tmp_path):
    from aiofs.mount import vfs as vfs_module

    temp_dir = tmp_path / "cache"
    vfs = VFS(vfs.fs, temp_dir=str(temp_dir))
    fh = vfs.create("/small")
    vfs.write(fh, b"x" * 4096, 0)
    node = vfs._handles[fh].node
    assert not node.temp.on_disk  # no temporary file for a small file
    vfs.write(fh, b"y" * 10, vfs_module.SMALL_FILE)  # past the limit: moves to disk
    assert node.temp.on_disk
    assert vfs.read(fh, 4, 4094) == b"xx\0\0"
    vfs.truncate("/small", 5000, fh)
    vfs.release(fh)
    assert vfs.fs.cat_file("/small") == b"x" * 4096 + b"\0" * 904
    assert vfs._memory_used == 0
    # A truncate far past the limit never allocates the zeros in memory.
    fh = vfs.open("/small", os.O_RDWR)
    vfs.truncate("/small", 1 << 30, fh)
    assert vfs._handles[fh].node.temp.on_disk and vfs.getattr("/small", fh)["st_size"] == 1 << 30
    vfs.truncate("/small", 3, fh)
    vfs.release(fh)
    assert vfs.fs.cat_file("/small") == b"xxx" and vfs._memory_used == 0


def test_memory_budget_is_shared(vfs, monkeypatch):
    from aiofs.mount import vfs as vfs_module

    monkeypatch.setattr(vfs_module, "MEMORY_BUDGET", 10_000)
    vfs = VFS(vfs.fs, stream_writes=False)
    first, second = vfs.create("/a"), vfs.create("/b")
    vfs.write(first, b"a" * 8000, 0)
    vfs.write(second, b"b" * 8000, 0)  # over the shared budget: on disk
    assert not vfs._handles[first].node.temp.on_disk
    assert vfs._handles[second].node.temp.on_disk
    vfs.release(first)
    vfs.release(second)
    assert vfs._memory_used == 0
    assert vfs.fs.cat_file("/a") == b"a" * 8000 and vfs.fs.cat_file("/b") == b"b" * 8000


def test_close_drops_the_temporary_file_and_readers_reopen(vfs):
    from aiofs.mount import vfs as vfs_module

    big = os.urandom(vfs_module.SMALL_FILE + 1)
    vfs = VFS(vfs.fs, stream_writes=False)  # large writes in a temporary file
    vfs.fs.pipe_file("/f", b"old content")
    reader = vfs.open("/f", os.O_RDONLY)
    assert vfs.read(reader, 3, 0) == b"old"
    writer = vfs.open("/f", os.O_WRONLY | os.O_TRUNC)
    vfs.write(writer, big, 0)
    vfs.flush(writer)  # not the last handle: the buffer stays
    assert vfs._handles[writer].node.temp is not None
    vfs.release(writer)
    assert vfs.read(reader, 8, 0) == big[:8]  # the stale read handle was replaced
    vfs.release(reader)
    writer = vfs.open("/f", os.O_RDWR)
    vfs.write(writer, b"NEW", 0)
    vfs.flush(writer)  # close(2) of the last handle: written, temporary file gone
    node = vfs._handles[writer].node
    assert node.temp is None and not node.dirty
    assert vfs.read(writer, 4, 0) == b"NEW" + big[3:4]
    vfs.write(writer, b"!", 1)  # a dup'ed descriptor may write on: reloaded from the stack
    vfs.release(writer)
    assert vfs.fs.cat_file("/f") == b"N!W" + big[3:]


def test_utimens_kept_on_a_pass_through_stack_only(tmp_path):
    store = tmp_path / "store"
    passthrough = VFS(Layer(fs=LocalBackend(str(store))))
    passthrough.release(passthrough.create("/t"))
    passthrough.utimens("/t", (1_000_000_000, 2_000_000_000))
    assert os.stat(store / "t").st_mtime_ns == 2_000_000_000
    assert passthrough.getattr("/t")["st_mtime"] == 2.0
    passthrough.utimens("/t", (None, 3_000_000_000))  # UTIME_OMIT for the access time
    assert os.stat(store / "t").st_atime_ns == 1_000_000_000
    # cp -p sets the times before close: applied once the content is in the stack
    fh = passthrough.create("/copy")
    passthrough.write(fh, b"data", 0)
    passthrough.utimens("/copy", (5_000_000_000, 6_000_000_000))
    assert passthrough.getattr("/copy", fh)["st_mtime"] == 6.0
    passthrough.release(fh)
    assert os.stat(store / "copy").st_mtime_ns == 6_000_000_000
    # a write after utimens sets the time to now, as on any filesystem
    fh = passthrough.open("/copy", os.O_WRONLY)
    passthrough.utimens("/copy", (5_000_000_000, 6_000_000_000))
    passthrough.write(fh, b"D", 0)
    passthrough.release(fh)
    assert os.stat(store / "copy").st_mtime > 1e9
    # any other stack keeps its own times: accepted and ignored
    from aiofs.layers.compress import Compress

    other = VFS(Compress(fs=LocalBackend(str(tmp_path / "other"))))
    assert other.stored_file("/t") is None
    other.release(other.create("/t"))
    before = other.getattr("/t")["st_mtime"]
    other.utimens("/t", (1_000_000_000, 2_000_000_000))
    assert other.getattr("/t")["st_mtime"] == before


def test_sequential_writes_stream_to_the_stack(vfs, tmp_path):
    from aiofs.mount import vfs as vfs_module

    block = os.urandom(1 << 20)
    vfs.fs.pipe_file("/s", b"old")
    fh = vfs.open("/s", os.O_WRONLY | os.O_TRUNC)
    for i in range(3):
        vfs.write(fh, block, i << 20)
    node = vfs._handles[fh].node
    assert node.temp.streaming and node.temp.file is None and vfs._memory_used == 0
    assert vfs.getattr("/s", fh)["st_size"] == 3 << 20
    assert vfs.fs.cat_file("/s") == b"old"  # nothing visible before close(2)
    vfs.write(fh, b"gap", (4 << 20) + 1)  # past the end: zeros in between
    vfs.truncate("/s", (5 << 20), fh)
    vfs.flush(fh)
    assert node.temp is None
    vfs.release(fh)
    assert vfs.fs.cat_file("/s") == block * 3 + b"\0" * ((1 << 20) + 1) + b"gap" + \
        b"\0" * ((1 << 20) - 4)
    assert not [n for n in os.listdir(tmp_path / "store") if n != "s"]  # no temporary left
    assert vfs_module.SMALL_FILE == 1 << 20


def test_a_stream_meeting_a_seek_back_or_a_read_becomes_a_file(vfs):
    block = os.urandom(3 << 20)
    fh = vfs.create("/z.wav")
    vfs.write(fh, b"RIFF\0\0\0\0", 0)
    vfs.write(fh, block, 8)
    assert vfs._handles[fh].node.temp.streaming
    vfs.write(fh, b"\1\2\3\4", 4)  # patch the header: written to the stack, copied back
    node = vfs._handles[fh].node
    assert not node.temp.streaming and node.temp.on_disk
    vfs.write(fh, b"tail", 8 + len(block))
    vfs.release(fh)
    assert vfs.fs.cat_file("/z.wav") == b"RIFF\1\2\3\4" + block + b"tail"
    fh = vfs.open("/z.wav", os.O_RDWR | os.O_TRUNC)
    vfs.write(fh, block, 0)
    assert vfs.read(fh, 5, 10) == block[10:15]  # a read needs the content: a file again
    vfs.truncate("/z.wav", 7, fh)
    vfs.release(fh)
    assert vfs.fs.cat_file("/z.wav") == block[:7]


def test_unlink_and_rename_over_a_streaming_file(vfs):
    block = os.urandom(2 << 20)
    fh = vfs.create("/gone")
    vfs.write(fh, block, 0)
    vfs.unlink("/gone")
    assert vfs.read(fh, 4, 100) == block[100:104]  # the open handle keeps the content
    vfs.write(fh, b"more", len(block))
    vfs.release(fh)
    assert not vfs.fs.exists("/gone")
    vfs.fs.pipe_file("/src", b"new")
    fh = vfs.create("/dst")
    vfs.write(fh, block, 0)
    vfs.rename("/src", "/dst")
    assert vfs.read(fh, 3, 0) == block[:3]  # the replaced file stays readable while open
    vfs.release(fh)
    assert vfs.fs.cat_file("/dst") == b"new" and not vfs.fs.exists("/src")


def test_a_failed_stream_is_discarded(tmp_path):
    from aiofs.layers.quota import Quota

    fs = Quota(fs=LocalBackend(str(tmp_path / "q")), max_file_size=3 << 20, max_bytes=1 << 30,
               state_dir=str(tmp_path / "state"))
    vfs = VFS(fs)
    fs.pipe_file("/f", b"kept")
    fh = vfs.open("/f", os.O_WRONLY | os.O_TRUNC)
    with pytest.raises(OSError) as info:
        for i in range(5):
            vfs.write(fh, b"x" * (1 << 20), i << 20)
    assert info.value.code == "FILE_TOO_LARGE"
    with pytest.raises(OSError):  # close(2) reports it too
        vfs.flush(fh)
    with pytest.raises(OSError):  # (the kernel ignores errors of release)
        vfs.release(fh)
    assert fs.cat_file("/f") == b"kept" and not vfs._handles and not vfs._nodes
    fh = vfs.open("/f", os.O_WRONLY | os.O_TRUNC)  # a new content replaces the failed one
    vfs.write(fh, b"fresh", 0)
    vfs.release(fh)
    assert fs.cat_file("/f") == b"fresh"


def test_editing_a_large_existing_file_uses_a_temporary_file(vfs):
    data = os.urandom(3 << 20)
    vfs.fs.pipe_file("/big", data)
    fh = vfs.open("/big", os.O_RDWR)
    vfs.write(fh, b"edit", 5)  # loads the file: into a temporary file, never streamed
    node = vfs._handles[fh].node
    assert node.temp.on_disk and not node.temp.streaming
    vfs.write(fh, b"end", len(data))
    vfs.release(fh)
    assert vfs.fs.cat_file("/big") == data[:5] + b"edit" + data[9:] + b"end"


def test_an_unlinked_file_keeps_its_content_across_close_of_a_dup(vfs):
    data = os.urandom(3 << 20)
    fh = vfs.create("/tmpfile")  # the classic anonymous temporary file: create, unlink, use
    vfs.unlink("/tmpfile")
    vfs.write(fh, data, 0)
    vfs.write(fh, b"x", 5)
    vfs.flush(fh)  # close(2) of a dup'ed descriptor
    assert vfs.read(fh, 10, 0) == data[:5] + b"x" + data[6:10]
    vfs.release(fh)
    assert not vfs.fs.exists("/tmpfile")


def test_unlisted_root_names_stay_reachable_after_a_cached_listing(tmp_path):
    """``.versions`` is left out of root listings but opens by path, cached listing or not."""
    from aiofs.layers import Versioning

    stack = Versioning(fs=LocalBackend(str(tmp_path / "store")), lock_dir=str(tmp_path / "locks"))
    stack.pipe_file("/a.txt", b"one")
    stack.pipe_file("/a.txt", b"two")
    vfs = VFS(stack, attr_ttl=60, dir_ttl=60)
    assert [name for name, _ in vfs.readdir("/")] == ["a.txt"]  # root listing now cached
    assert vfs.getattr("/.versions")["st_mode"] & 0o170000 == 0o040000
    (name,) = [n for n, _ in vfs.readdir("/.versions/a.txt")]
    fh = vfs.open(f"/.versions/a.txt/{name}", os.O_RDONLY)
    assert vfs.read(fh, 10, 0) == b"one"
    vfs.release(fh)
    with pytest.raises(FsError) as missing:  # other names missing from the listing stay absent
        vfs.getattr("/.nothing")
    assert missing.value.errno == errno.ENOENT


def test_sequential_reads_of_a_layered_stack_prefetch_and_stay_exact(tmp_path):
    """Past the read-ahead window, the next window is fetched in the background; bytes are
    exact, also when the file changes through the mount between reads."""
    from aiofs.layers import Compress

    stack = Compress(fs=LocalBackend(str(tmp_path / "store")), cache_dir=str(tmp_path / "cc"))
    data = os.urandom(1 << 20) + b"text " * (2 << 20)
    stack.pipe_file("/big", data)
    vfs = VFS(stack, attr_ttl=60, dir_ttl=60, read_ahead=1 << 20)
    fh = vfs.open("/big", os.O_RDONLY)
    step = 128 << 10
    got = [vfs.read(fh, step, off) for off in range(0, len(data), step)]
    assert b"".join(got) == data
    assert vfs._handle(fh).prefetch is not None or vfs._prefetcher is not None  # it did prefetch
    writer = vfs.open("/big", os.O_RDWR)
    vfs.write(writer, b"X" * 10, 5 << 20)
    vfs.flush(writer)
    vfs.release(writer)
    changed = data[:5 << 20] + b"X" * 10 + data[(5 << 20) + 10:]
    again = [vfs.read(fh, step, off) for off in range(0, len(changed), step)]
    assert b"".join(again) == changed
    vfs.release(fh)
    vfs.close()
