"""Conflict policies and conflicted-copy names of the offline layer.

A conflict is a queued local edit whose base (the remote version it was made from) is no
longer what the remote holds. ``keep-both`` (the default) leaves the remote version at the
path and uploads the local edit as ``name (conflicted copy YYYY-MM-DD HHMMSS HOST).ext``;
``local-wins`` uploads over the remote version; ``remote-wins`` drops the local edit (it is
recorded in the ``conflicts`` table with its outcome); ``newer-wins`` keeps whichever was
modified last. Every conflict is listed by ``Offline.status()``.
"""

from __future__ import annotations

import datetime
import posixpath
import socket

from aiofs.errors import InvalidArgument

KEEP_BOTH = "keep-both"
NEWER_WINS = "newer-wins"
LOCAL_WINS = "local-wins"
REMOTE_WINS = "remote-wins"
POLICIES = (KEEP_BOTH, NEWER_WINS, LOCAL_WINS, REMOTE_WINS)


def check_policy(policy: str) -> str:
    """``policy`` if it is a known conflict policy, else ``INVALID_ARGUMENT``."""
    if policy not in POLICIES:
        raise InvalidArgument(f"conflict_policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    return policy


def conflicted_copy_name(path: str, when: float, host: str | None = None) -> str:
    """``dir/name (conflicted copy 2026-01-31 235959 HOST).ext`` for ``dir/name.ext``."""
    host = (host or socket.gethostname().split(".")[0] or "host").replace("/", "_")
    stamp = datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H%M%S")
    directory, name = posixpath.split(path)
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:  # no extension, or a dot file such as ".env"
        stem, ext = name, ""
    copy = f"{stem} (conflicted copy {stamp} {host})" + (f".{ext}" if ext else "")
    return posixpath.join(directory, copy) if directory else copy


def decide(policy: str, local_mtime: float, remote_mtime: float | None) -> str:
    """What to do with a conflicting edit: ``"copy"``, ``"overwrite"`` or ``"drop"``."""
    if policy == KEEP_BOTH:
        return "copy"
    if policy == LOCAL_WINS:
        return "overwrite"
    if policy == REMOTE_WINS:
        return "drop"
    if remote_mtime is None or local_mtime >= remote_mtime:
        return "overwrite"
    return "drop"
