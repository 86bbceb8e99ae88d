"""Crash safety of Offline(LocalBackend): 50 writer processes killed with SIGKILL at random
moments, while they write and while their syncer uploads; after each, a fresh process drains
the queue and every write acknowledged by ``close()`` is on the remote, with no duplicates
(no conflicted copy of our own upload, no operation applied twice)."""

from __future__ import annotations

import functools

import blake3

from aiofs import LocalBackend
from aiofs.layers import Offline
from aiofs.testing.crash import crash_trials, read_journal


def open_stack(root: str, seed: int):
    """The stack under test (module level: the writer processes build it by name)."""
    return Offline(fs=LocalBackend(f"{root}/remote", fsync=False), cache_dir=f"{root}/cache",
                   heartbeat_interval=0.05)


def test_sigkilled_writers_lose_no_acknowledged_write(tmp_path):
    remote = LocalBackend(str(tmp_path / "remote"), fsync=False)
    uploaded_by_writer = []

    def verify(fs, journal, writer_seed):
        try:
            uploaded_by_writer.append(fs.queue_totals()["count"])
            fs.sync(wait=True)
            assert fs.queue_totals()["count"] == 0
        finally:
            fs.close()
        names = remote.find("")
        assert not [n for n in names if "conflicted copy" in n], "a duplicate of our own upload"
        for path in _paths(journal, lambda p: p.startswith((f"/s{writer_seed}/", "/shared"))):
            if path not in journal.done and not remote.exists(path):
                continue  # begun, never acknowledged: absent is right
            digest = blake3.blake3(remote.cat_file(path)).hexdigest()
            assert digest in journal.allowed(path), path

    journal_path = str(tmp_path / "journal")
    killed = crash_trials(functools.partial(open_stack, str(tmp_path)), verify, journal_path,
                          trials=50, max_delay=0.3)
    assert killed == 50
    journal = read_journal(journal_path)
    assert len(journal.done) > 200  # the writers got real work done between kills
    assert sum(1 for n in uploaded_by_writer if n) >= 10  # kills often left queued operations
    for path in _paths(journal, lambda p: True):
        if path in journal.done or remote.exists(path):
            assert blake3.blake3(remote.cat_file(path)).hexdigest() in journal.allowed(path), path


def _paths(journal, wanted) -> list[str]:
    return sorted(p for p in set(journal.done) | set(journal.begun) if wanted(p))
