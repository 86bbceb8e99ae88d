"""The FUSE mount, mounted for real (libfuse3): shell tools, Python file calls, the model test.

Each mount is an ``aiofs mount ... --foreground`` subprocess (crashes stay isolated); the
fixture waits for the mount and always unmounts, also when a test fails.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from aiofs.mount import is_mounted, is_stale
from aiofs.mount.fuse import find_libfuse3

# Skipped only outside CI (a developer machine without fuse3); in CI (CI=true) a missing fuse3
# means the set-up command is broken, so the tests run and fail loudly.
FUSE_MISSING = "needs /dev/fuse and fuse3 (apt-get install fuse3)" if (
    not os.environ.get("CI")
    and (not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or find_libfuse3() is None)
) else ""
pytestmark = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING or "fuse3 present")

AIOFS = [sys.executable, "-m", "aiofs.cli"]
# Extra mount options for every test mount, e.g. AIOFS_TEST_MOUNT_OPTIONS=--writeback-cache
EXTRA_OPTIONS = os.environ.get("AIOFS_TEST_MOUNT_OPTIONS", "").split()


class Mount:
    """A running ``aiofs mount --foreground`` process."""

    def __init__(self, tmp_path, stack: str, store, extra: tuple[str, ...] = ()):
        self.store = store
        self.mountpoint = str(tmp_path / f"mnt-{stack}")
        os.makedirs(self.mountpoint, exist_ok=True)
        config = tmp_path / "config.toml"
        if not config.exists():
            config.write_text(
                f'[settings]\nlocal_storage_path = "{tmp_path / "default-store"}"\n\n'
                f'[stacks.plain]\nbackend = {{ type = "local", root = "{tmp_path / "plain-store"}" }}\n\n'
                f'[stacks.capped]\nlayers = [{{ type = "quota", max_file_size = 100000, '
                f'max_bytes = 400000, state_dir = "{tmp_path / "quota-state"}" }}]\n'
                f'backend = {{ type = "local", root = "{tmp_path / "capped-store"}" }}\n'
            )
        env = dict(os.environ, AIOFS_CONFIG=str(config))
        env.pop("LOCAL_STORAGE_PATH", None)
        self.log = open(tmp_path / f"mount-{stack}.log", "wb")
        self.process = subprocess.Popen(
            [*AIOFS, "--config", str(config), "mount", stack, self.mountpoint, "--foreground",
             *EXTRA_OPTIONS, *extra],
            stdout=self.log, stderr=self.log, env=env,
        )
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(open(self.log.name).read())
            time.sleep(0.02)  # poll until the kernel shows the mount (bounded by the deadline)

    def path(self, *parts: str) -> str:
        return os.path.join(self.mountpoint, *parts)

    def stop(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True)
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-uz", self.mountpoint], capture_output=True)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(params=["plain", "default"])
def mounted(request, tmp_path):
    stores = {"plain": tmp_path / "plain-store", "default": tmp_path / "default-store"}
    mount = Mount(tmp_path, request.param, stores[request.param])
    yield mount
    mount.stop()


@pytest.fixture
def plain(tmp_path):
    mount = Mount(tmp_path, "plain", tmp_path / "plain-store")
    yield mount
    mount.stop()


def sh(command: str, cwd: str) -> str:
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def test_shell_tools(mounted, tmp_path):
    mp = mounted.mountpoint
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20) + b"end")
    sh(f"cp {src} copy.bin && cmp {src} copy.bin", mp)
    sh("mkdir -p docs/sub && echo hello > docs/a.txt && echo world >> docs/a.txt", mp)
    assert sh("cat docs/a.txt", mp) == "hello\nworld\n"
    sh("mv docs/a.txt docs/sub/b.txt", mp)
    listing = sh("ls -l docs/sub", mp)
    assert "b.txt" in listing and " 12 " in listing
    sh("dd if=/dev/zero of=zeros bs=1M count=8 status=none && dd if=zeros of=/dev/null bs=64k status=none", mp)
    assert os.path.getsize(mounted.path("zeros")) == 8 << 20
    found = sh("find . -type f | sort", mp).split()
    assert found == ["./copy.bin", "./docs/sub/b.txt", "./zeros"]
    df = sh("df -P .", mp).splitlines()[-1].split()
    assert int(df[1]) > 0
    sh("rm zeros && rm -r docs", mp)
    assert sh("ls", mp).split() == ["copy.bin"]
    # The bytes really are in the stack's store (pass-through stack: same file on disk).
    if mounted.store.name == "plain-store":
        assert (mounted.store / "copy.bin").read_bytes() == src.read_bytes()


def test_python_file_calls(mounted):
    path = mounted.path("f.bin")
    with open(path, "wb") as f:
        f.write(b"0123456789")
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(b"ab")
        f.seek(0)
        assert f.read() == b"0123ab6789"
        f.truncate(6)
    assert open(path, "rb").read() == b"0123ab"
    with open(path, "ab") as f:
        f.write(b"XY")
    assert open(path, "rb").read() == b"0123abXY"
    os.truncate(path, 3)
    assert open(path, "rb").read() == b"012"
    os.truncate(path, 5)
    assert open(path, "rb").read() == b"012\0\0"
    with open(path, "rb") as f:
        f.seek(2)
        assert f.read(2) == b"2\0"
    # two handles on one file see each other's writes
    with open(path, "r+b") as a, open(path, "rb") as b:
        a.write(b"Z")
        a.flush()
        assert b.read(1) == b"Z"
    # fsync makes the bytes durable in the stack while the file stays open
    fd = os.open(mounted.path("sync.txt"), os.O_CREAT | os.O_WRONLY)
    os.write(fd, b"durable")
    os.fsync(fd)
    if mounted.store.name == "plain-store":
        assert (mounted.store / "sync.txt").read_bytes() == b"durable"
    os.close(fd)
    # a large sequential write streams to the stack; zipfile then seeks back to patch the
    # member's header: the stream is written to the stack and continues in a temporary file
    import zipfile

    member = os.urandom(3 << 20)
    with zipfile.ZipFile(mounted.path("a.zip"), "w") as zf:
        with zf.open("member.bin", "w") as f:
            f.write(member)
    with zipfile.ZipFile(mounted.path("a.zip")) as zf:
        assert zf.read("member.bin") == member
    # exclusive create
    with pytest.raises(FileExistsError):
        open(path, "xb")
    before = os.stat(path).st_mtime
    os.utime(path, (1, 2))  # kept on the pass-through stack, ignored on the default stack
    assert os.stat(path).st_mtime == (2 if mounted.store.name == "plain-store" else before)
    os.chmod(path, 0o600)   # accepted, ignored: modes are fixed
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_times_kept_on_a_pass_through_stack(plain, tmp_path):
    """touch -d, touch -m (access time omitted) and cp -p (futimens before close)."""
    mp = plain.mountpoint
    sh("echo hi > a && touch -d '2001-02-03 04:05:06 UTC' a", mp)
    assert os.stat(plain.path("a")).st_mtime == 981173106
    assert os.stat(plain.store / "a").st_mtime == 981173106
    atime = os.stat(plain.store / "a").st_atime
    sh("touch -m -d '2002-01-01 00:00:00 UTC' a", mp)
    assert os.stat(plain.store / "a").st_atime == atime
    assert os.stat(plain.store / "a").st_mtime == 1009843200
    src = tmp_path / "src.txt"
    src.write_bytes(b"x" * 100_000)
    os.utime(src, (1_500_000_000, 1_600_000_000))
    sh(f"cp -p {src} copy.txt", mp)
    assert os.stat(plain.path("copy.txt")).st_mtime == 1_600_000_000
    assert os.stat(plain.store / "copy.txt").st_mtime == 1_600_000_000
    assert (plain.store / "copy.txt").read_bytes() == src.read_bytes()


def test_rename_semantics(plain):
    p = plain.path
    open(p("a"), "wb").write(b"A")
    open(p("b"), "wb").write(b"B")
    os.rename(p("a"), p("b"))  # over an existing file
    assert open(p("b"), "rb").read() == b"A" and not os.path.exists(p("a"))
    os.makedirs(p("d1/inner"))
    open(p("d1/inner/x"), "wb").write(b"x")
    os.rename(p("d1"), p("d2"))  # a directory
    assert open(p("d2/inner/x"), "rb").read() == b"x" and not os.path.exists(p("d1"))
    os.mkdir(p("empty"))
    os.rename(p("d2"), p("empty"))  # over an empty directory
    assert os.listdir(p("empty")) == ["inner"]
    os.mkdir(p("full"))
    open(p("full/y"), "wb").write(b"y")
    with pytest.raises(OSError) as info:
        os.rename(p("empty"), p("full"))
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(IsADirectoryError):
        os.rename(p("b"), p("full"))
    with pytest.raises(OSError) as info:
        os.rmdir(p("full"))
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileNotFoundError):
        os.unlink(p("missing"))
    # a file renamed while open keeps its writes
    f = open(p("open.txt"), "wb")
    f.write(b"first")
    f.flush()
    os.rename(p("open.txt"), p("moved.txt"))
    f.write(b"+second")
    f.close()
    assert open(p("moved.txt"), "rb").read() == b"first+second"
    assert not os.path.exists(p("open.txt"))
    # unlink while open: the handle still reads
    open(p("gone"), "wb").write(b"still here")
    g = open(p("gone"), "rb")
    os.unlink(p("gone"))
    assert g.read() == b"still here"
    g.close()
    assert not os.path.exists(p("gone"))


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_large_file_streams(plain, tmp_path):
    """Large files stream through the daemon: round trip, sparse zeros, bounded memory."""
    path = plain.path("large.bin")
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(300):
            f.write(block)
        f.seek(400 << 20)
        f.write(b"tail")
    assert os.path.getsize(path) == (400 << 20) + 4
    with open(path, "rb") as f:
        assert f.read(1 << 20) == block
        f.seek(299 << 20)
        assert f.read(1 << 20) == block
        assert f.read(16) == b"\0" * 16
        f.seek(400 << 20)
        assert f.read() == b"tail"
    with open(path, "r+b") as f:  # an in-place edit of a large file
        f.seek(5)
        f.write(b"edit")
    with open(path, "rb") as f:
        assert f.read(9) == block[:5] + b"edit"
        while f.read(8 << 20):
            pass
    # 400 MiB went through the daemon; it never held more than a few blocks of it.
    assert _peak_rss(plain.process.pid) < 200 << 20


def test_read_only_and_quota_errors(tmp_path):
    ro = Mount(tmp_path, "plain", tmp_path / "plain-store", extra=("--read-only",))
    try:
        with pytest.raises(OSError) as info:
            open(ro.path("x"), "wb")
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            os.mkdir(ro.path("d"))
        assert info.value.errno == errno.EROFS
    finally:
        ro.stop()
    capped = Mount(tmp_path, "capped", tmp_path / "capped-store")
    try:
        with pytest.raises(OSError) as info:
            with open(capped.path("big"), "wb") as f:
                f.write(b"x" * 200_000)
        assert info.value.errno == errno.EFBIG
        with pytest.raises(OSError) as info:
            for i in range(6):  # 6 x 90 kB > the 400 kB quota
                with open(capped.path(f"part{i}"), "wb") as f:
                    f.write(b"y" * 90_000)
        assert info.value.errno == errno.EDQUOT
        assert i == 4
        st = os.statvfs(capped.mountpoint)
        assert st.f_blocks * st.f_frsize == 400000 // 4096 * 4096
    finally:
        capped.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_and_unmounts(tmp_path, signum):
    mount = Mount(tmp_path, "plain", tmp_path / "plain-store")
    try:
        fd = os.open(mount.path("pending.txt"), os.O_CREAT | os.O_WRONLY)
        os.write(fd, b"written before SIGTERM")
        big = os.urandom(3 << 20)  # past the in-memory size: streaming into the stack
        big_fd = os.open(mount.path("pending.bin"), os.O_CREAT | os.O_WRONLY)
        os.write(big_fd, big)
        mount.process.send_signal(signum)
        assert mount.process.wait(timeout=20) == 0
        for descriptor in (fd, big_fd):
            try:
                os.close(descriptor)
            except OSError:
                pass
        assert not is_mounted(mount.mountpoint)
        assert (tmp_path / "plain-store" / "pending.txt").read_bytes() == b"written before SIGTERM"
        assert (tmp_path / "plain-store" / "pending.bin").read_bytes() == big
    finally:
        mount.stop()


def test_killed_daemon_leaves_a_mount_unmount_clears(tmp_path):
    mount = Mount(tmp_path, "plain", tmp_path / "plain-store")
    try:
        mount.process.kill()
        mount.process.wait()
        assert is_mounted(mount.mountpoint) and is_stale(mount.mountpoint)
        result = subprocess.run([*AIOFS, "unmount", mount.mountpoint], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mount.mountpoint)
        assert os.listdir(mount.mountpoint) == []
    finally:
        mount.stop()


def test_background_mount_and_unmount_commands(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[stacks.bg]\nbackend = {{ type = "local", root = "{tmp_path / "bg"}" }}\n')
    mp = tmp_path / "mp"
    mp.mkdir()
    result = subprocess.run([*AIOFS, "--config", str(config), "mount", "bg", str(mp)],
                            capture_output=True, text=True, timeout=60)
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mp)
        (mp / "hello.txt").write_text("hi")
    finally:
        result = subprocess.run([*AIOFS, "unmount", str(mp)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(mp)
    assert (tmp_path / "bg" / "hello.txt").read_text() == "hi"
    result = subprocess.run([*AIOFS, "unmount", str(mp)], capture_output=True, text=True)
    assert result.returncode == 1 and "not mounted" in result.stderr


# Examples per adapter. ~25 ms per example of 10 steps through the kernel here (2 cores):
# 300 + 300 examples add about 15 s to the suite.
MODEL_EXAMPLES = int(os.environ.get("AIOFS_MOUNT_MODEL_EXAMPLES", "300"))


@pytest.mark.parametrize("adapter", ["os", "local-backend", "os-streaming"])
def test_stateful_model_through_the_kernel(tmp_path, monkeypatch, adapter):
    """aiofs's model test, driven through real os calls on the mount.

    ``os``: fsspec's LocalFileSystem (plain open/write/rename/unlink/mkdir on the mount);
    ``local-backend``: aiofs's LocalBackend rooted at the mount (temp file, fsync, rename
    over the old file: the atomic-write path editors use); ``os-streaming``: ``os`` on a
    mount that keeps nothing in memory, so every write streams into the stack's writer.
    """
    from fsspec.implementations.local import LocalFileSystem

    from aiofs.backends.local import LocalBackend
    from aiofs.testing.stateful import run_stateful

    class OsCalls(LocalFileSystem):
        def cat_file(self, path, start=None, end=None, **kwargs):
            size = os.path.getsize(path)
            start = 0 if start is None else (max(size + start, 0) if start < 0 else start)
            end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
            if end <= start:
                return b""
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(end - start)

    if adapter == "os-streaming":
        monkeypatch.setenv("AIOFS_MOUNT_SMALL_FILE", "0")
    plain = Mount(tmp_path, "plain", tmp_path / "plain-store")
    roots = iter(range(10**9))
    if adapter in ("os", "os-streaming"):
        fs = OsCalls(auto_mkdir=True)
        factory = lambda: (fs, f"{plain.mountpoint}/run{next(roots)}")  # noqa: E731
    else:
        fs = LocalBackend(plain.mountpoint)
        factory = lambda: (fs, f"run{next(roots)}")  # noqa: E731
    try:
        ran = run_stateful(factory, max_examples=MODEL_EXAMPLES)
    finally:
        plain.stop()
    assert ran >= MODEL_EXAMPLES
