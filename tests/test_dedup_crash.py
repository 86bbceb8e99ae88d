"""Crash safety of Dedup(Compress(LocalBackend)): 50 writer processes killed with SIGKILL at
random moments; after each, ``check`` is clean and every file closed before the kill reads
back intact."""

from __future__ import annotations

import functools

import blake3

from aiofs import LocalBackend
from aiofs.layers import Compress, Dedup
from aiofs.testing.crash import crash_trials, read_journal

SMALL = {"min_size": "1KiB", "avg_size": "4KiB", "max_size": "16KiB", "pack_size": "1MiB",
         "batch_size": "64KiB"}


def open_stack(root: str, seed: int):
    """The stack under test (module level: the writer processes build it by name)."""
    target = Compress(fs=LocalBackend(f"{root}/store", fsync=False), frame_size=16384,
                      cache_dir=f"{root}/compress-cache")
    return Dedup(fs=target, cache_dir=f"{root}/cache", **SMALL)


def test_sigkilled_writers_never_corrupt_the_store(tmp_path):
    verified = []

    def verify(fs, journal, writer_seed):
        report = fs.check()
        assert report["ok"], report["problems"]
        # the killed writer's files and the shared ones (earlier writers' files were
        # verified after their own kill, and all are verified again at the end)
        for path in _paths(journal, lambda p: p.startswith((f"/s{writer_seed}/", "/shared"))):
            if path not in journal.done and not fs.exists(path):
                continue  # begun, never finished: absent is right
            digest = blake3.blake3(fs.cat_file(path)).hexdigest()
            assert digest in journal.allowed(path), path
        verified.append(len(journal.done))
        fs.close()

    journal_path = str(tmp_path / "journal")
    killed = crash_trials(functools.partial(open_stack, str(tmp_path)), verify,
                          journal_path, trials=50)
    assert killed == 50
    assert verified[-1] > 100  # the writers got real work done between kills
    fs = open_stack(str(tmp_path), 0)
    assert fs.check(read_data=True)["ok"]
    journal = read_journal(journal_path)
    for path in _paths(journal, lambda p: True):
        if path in journal.done or fs.exists(path):
            assert blake3.blake3(fs.cat_file(path)).hexdigest() in journal.allowed(path), path


def _paths(journal, wanted) -> list[str]:
    return sorted(p for p in set(journal.done) | set(journal.begun) if wanted(p))


def test_journal_allows_every_write_begun_since_the_last_done(tmp_path):
    """Regression (a flaky failure of the test above): a shared file's write landed but its
    writer was killed before journaling it done; the next writer began another write of it
    and was killed before that one landed. The file then rightly holds the first content,
    which the journal had forgotten (it kept only the last write begun)."""
    journal = tmp_path / "journal"
    h = {n: f"{n:064x}" for n in range(4)}
    journal.write_text(f"D\t/shared0\t{h[0]}\nB\t/shared0\t{h[1]}\nB\t/shared0\t{h[2]}\n"
                       f"B\t/other\t{h[3]}\nD\t/other\t{h[3]}\nB\t/torn\t{h[1][:9]}")
    parsed = read_journal(str(journal))
    assert parsed.allowed("/shared0") == {h[0], h[1], h[2]}
    assert parsed.allowed("/other") == {h[3]} and parsed.allowed("/torn") == set()
    with journal.open("a") as f:
        f.write(f"\nD\t/shared0\t{h[2]}\n")  # a later write landed: the earlier ones are gone
    assert read_journal(str(journal)).allowed("/shared0") == {h[2]}

