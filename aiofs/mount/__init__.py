"""Mount any aiofs stack (any fsspec filesystem) as a drive through FUSE (libfuse3).

:mod:`aiofs.mount.vfs` holds the logic (handles, write-back, caches) and needs no FUSE;
:mod:`aiofs.mount.fuse` is the thin mfusepy face. ``aiofs mount`` / ``aiofs unmount`` are
the commands; see docs/mount.md.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

from aiofs.mount.vfs import VFS, FsError

__all__ = ["VFS", "FsError", "is_mounted", "unmount"]


def is_mounted(mountpoint: str) -> bool:
    """True while ``mountpoint`` is in the mount table (also a dead daemon's stale mount)."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                    return True
    except OSError:
        return os.path.ismount(mountpoint)
    return False


def is_stale(mountpoint: str) -> bool:
    """True when the mount's daemon is gone ("Transport endpoint is not connected")."""
    try:
        os.stat(mountpoint)  # may be answered from the kernel's attribute cache
        os.listdir(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount a FUSE mount, also one left by a killed daemon.

    Tries ``fusermount3 -u``; if the mount is stale or busy and ``lazy`` (or stale), detaches
    it lazily (``fusermount3 -uz``, then ``umount -l`` as root).
    """
    if not is_mounted(mountpoint):
        raise OSError(errno.EINVAL, "not mounted", mountpoint)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    attempts = []
    if tool:
        attempts.append([tool, "-u", mountpoint])
        if lazy or is_stale(mountpoint):
            attempts.append([tool, "-uz", mountpoint])
    if os.geteuid() == 0 and shutil.which("umount"):
        attempts.append(["umount", mountpoint])
        attempts.append(["umount", "-l", mountpoint])
    last = ""
    for command in attempts:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0 and not is_mounted(mountpoint):
            return
        last = (result.stderr or result.stdout).strip()
    raise OSError(errno.EBUSY, f"could not unmount ({last or 'busy'}); try again with --lazy",
                  mountpoint)
