"""Crash trials: kill a writer process with SIGKILL at random moments, then verify the store.

:func:`crash_trials` runs ``trials`` rounds. Each round starts a writer process (from a
fork server, so starting one is cheap) that opens the stack ``factory`` builds and writes
files in a loop: whole-file writes, streamed writes and bulk writes, some of them
overwriting a file written before. Before a write the writer journals ``B<TAB>path<TAB>
blake3`` lines, after it returns ``D`` lines, fsynced. The parent kills the writer at a
random moment, then calls ``verify(fs, journal, writer_seed)`` with a fresh stack and
the :class:`Journal` (the killed writer's own files are below ``/s<writer_seed>/``): every file closed before the kill must read back intact (its last ``D``
content, or any content begun after it: such a write may have finished unjournaled, also
in an earlier writer), and anything else the caller checks (``Dedup.check``...).

``factory`` must pickle (a module-level function, or a ``functools.partial`` of one):
``factory(seed)`` returns a filesystem.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable

import blake3

__all__ = ["Journal", "crash_trials", "read_journal"]


def _writer(factory: Callable, journal: str, seed: int, ready) -> None:
    """The writer process: write files until killed."""
    fs = factory(seed)
    rng = random.Random(seed)
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    ready.set()
    n = 0
    while True:
        n += 1
        kind = rng.choice(("pipe_file", "stream", "bulk", "overwrite"))
        size = rng.choice((0, 10, 3000, rng.randrange(5_000, 400_000)))
        data = rng.randbytes(size)
        if kind == "bulk":
            files = {f"/s{seed}/bulk{n}-{i}": rng.randbytes(rng.randrange(0, 120_000))
                     for i in range(rng.randrange(2, 6))}
            _journal(fd, "B", files)
            fs.pipe(files)
        else:
            path = f"/shared{rng.randrange(3)}" if kind == "overwrite" else f"/s{seed}/f{n}"
            _journal(fd, "B", {path: data})
            if kind == "stream":
                with fs.open(path, "wb") as f:
                    for i in range(0, len(data), 7_000):
                        f.write(data[i : i + 7_000])
            else:
                fs.pipe_file(path, data)
            files = {path: data}
        _journal(fd, "D", files)


def _journal(fd: int, kind: str, files: dict[str, bytes]) -> None:
    lines = "".join(f"{kind}\t{p}\t{blake3.blake3(v).hexdigest()}\n" for p, v in files.items())
    os.write(fd, lines.encode())
    os.fsync(fd)


class Journal:
    """What the writers claimed: ``done[path]`` (the last write closed before a kill) and
    ``begun[path]`` (every write of that path started after it, unfinished or unjournaled:
    each one may have landed, so shared paths, written by one killed writer after another,
    can hold any of them)."""

    def __init__(self, done: dict[str, str], begun: dict[str, set[str]]):
        self.done = done
        self.begun = begun

    def allowed(self, path: str) -> set[str]:
        """The content hashes ``path`` may have now."""
        allowed = set(self.begun.get(path, ()))
        if path in self.done:
            allowed.add(self.done[path])
        return allowed


def read_journal(journal: str) -> Journal:
    """Parse a journal file (a torn last line is ignored)."""
    done: dict[str, str] = {}
    begun: dict[str, set[str]] = {}
    try:
        with open(journal, "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return Journal(done, begun)
    for line in text.split("\n")[:-1]:  # the last piece is empty or a torn line
        kind, _, rest = line.partition("\t")
        path, _, digest = rest.partition("\t")
        if len(digest) != 64:
            continue
        if kind == "B":
            begun.setdefault(path, set()).add(digest)
        elif kind == "D":  # the newest write that landed: what began before it is gone
            done[path] = digest
            begun.pop(path, None)
    return Journal(done, begun)


def crash_trials(factory: Callable, verify: Callable, journal: str, trials: int = 50,
                 max_delay: float = 0.4, seed: int = 0) -> int:
    """Run ``trials`` kill-and-verify rounds; returns how many writers were killed mid-run."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([getattr(factory, "func", factory).__module__, __name__])
    rng = random.Random(seed)
    killed = 0
    for trial in range(trials):
        ready = context.Event()
        process = context.Process(target=_writer, args=(factory, journal, seed * 1000 + trial, ready),
                                  daemon=True)
        process.start()
        if not ready.wait(60):
            process.kill()
            raise RuntimeError("the writer process did not start")
        time.sleep(rng.uniform(0, max_delay))  # the random moment of the kill
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            killed += 1
        process.join(30)
        if process.exitcode not in (-signal.SIGKILL,):
            raise RuntimeError(f"the writer ended on its own (exit code {process.exitcode})")
        verify(factory(seed * 1000 + trial + 500_000), read_journal(journal), seed * 1000 + trial)
    return killed
