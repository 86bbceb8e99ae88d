"""Shared benchmark harness: deterministic data, timing, durability helpers, tables, JSON.

Every benchmark builds a :class:`Report` of :class:`Row` objects (one timing list per
contender), declares the ratios it cares about as :class:`Ratio` objects, and hands the
report to :func:`emit`, which prints a table and writes ``benchmarks/results/NAME.json``.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIB = 1 << 10
MIB = 1 << 20
MB = 1_000_000  # throughput is reported in MB/s (10^6 bytes), like dd, fio and NOTES.md

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# -- deterministic data ---------------------------------------------------------------------

# A fixed vocabulary so text-like blocks compress like logs (zlib level 6: ~0.33 on text
# blocks, ~0.66 on the mixed set, near the zstd figures in NOTES.md), not like random bytes
# and not like one repeated word.
_VOCABULARY = (
    "the of and to in is for on with that by this be are from at as it or an was which "
    "file files data block chunk layer stack cache index journal version dedup compress "
    "read write open close sync flush rename delete list stat mkdir path name size mtime "
    "error warning info debug trace request response status retry timeout backend local "
    "drive bucket object key value hash digest offset length range start end count total "
    "user group owner mode created modified deleted moved copied upload download server "
    "client session token config option default enabled disabled true false null none "
    "alpha beta gamma delta epsilon zeta theta lambda sigma omega kernel process thread "
    "queue worker task job batch stream buffer pipe socket port host address route"
).split()
_LEVELS = ("DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR")
_LINE_POOL_SIZE = 4096
_line_pools: dict[int, list[bytes]] = {}


def _line_pool(seed: int) -> list[bytes]:
    """A fixed pool of log-like lines; text blocks are random draws from it (fast)."""
    pool = _line_pools.get(seed)
    if pool is None:
        rng = random.Random(f"aiofs-bench-lines:{seed}")
        pool = []
        for i in range(_LINE_POOL_SIZE):
            words = " ".join(rng.choice(_VOCABULARY) for _ in range(rng.randint(4, 16)))
            pool.append(
                f"2025-01-{1 + i % 28:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:"
                f"{rng.randrange(60):02d}Z {rng.choice(_LEVELS)} [{rng.randrange(1000):03d}] "
                f"{words} id={rng.randrange(1 << 32):08x} n={rng.randrange(100000)}\n".encode()
            )
        _line_pools[seed] = pool
    return pool


def random_block(index: int, seed: int = 0, size: int = MIB) -> bytes:
    """``size`` incompressible bytes, a pure function of ``(seed, index)``."""
    return random.Random(f"aiofs-bench-random:{seed}:{index}").randbytes(size)


def text_block(index: int, seed: int = 0, size: int = MIB) -> bytes:
    """``size`` bytes of text-like lines from a fixed vocabulary, a pure function of its args."""
    pool = _line_pool(seed)
    rng = random.Random(f"aiofs-bench-text:{seed}:{index}")
    average = sum(map(len, pool[:256])) / 256
    parts: list[bytes] = []
    length = 0
    while length < size:
        more = rng.choices(pool, k=int((size - length) / average) + 16)
        parts.extend(more)
        length += sum(map(len, more))
    return b"".join(parts)[:size]


def mixed_block(index: int, seed: int = 0, size: int = MIB) -> bytes:
    """Block ``index`` of the "mixed" set: even blocks random, odd blocks text-like.

    Interleaving (rather than a random half then a text half) means any prefix of the set is
    itself half and half, so compressibility probes on the first blocks are not fooled.
    """
    return random_block(index, seed, size) if index % 2 == 0 else text_block(index, seed, size)


def mixed_blocks(total: int, seed: int = 0, block_size: int = MIB) -> Iterator[bytes]:
    """The "mixed" data set of ``total`` bytes as consecutive blocks (the last may be short)."""
    index = 0
    while total > 0:
        block = mixed_block(index, seed, block_size)
        yield block if total >= block_size else block[:total]
        total -= len(block)
        index += 1


def mixed_bytes(total: int, seed: int = 0) -> bytes:
    """The "mixed" data set of ``total`` bytes in one ``bytes`` object."""
    return b"".join(mixed_blocks(total, seed))


def write_mixed_file(path: str | os.PathLike, total: int, seed: int = 0) -> None:
    """Write the "mixed" data set to a local file (not fsynced: callers decide)."""
    with open(path, "wb") as f:
        for block in mixed_blocks(total, seed):
            f.write(block)


def small_files(count: int, size: int, seed: int = 0) -> dict[str, bytes]:
    """``count`` file names (``f00000.bin``...) mapped to ``size`` bytes each, from the mixed set.

    Consecutive files are cut from the mixed stream, so about half are random and half
    text-like, and all differ.
    """
    blob = mixed_bytes(count * size, seed)
    return {f"f{i:05d}.bin": blob[i * size : (i + 1) * size] for i in range(count)}


# -- machine state -----------------------------------------------------------------------------


def sync() -> None:
    """Flush every dirty page and inode to disk (the end of a "until durable" timing)."""
    os.sync()


def drop_caches() -> bool:
    """Sync, then drop the page cache, dentries and inodes; ``False`` if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def shell(command: str) -> None:
    """Run a shell command (bash), raising if it fails."""
    subprocess.run(["bash", "-c", command], check=True)


def scratch_dir(base: str | None = None, prefix: str = "aiofs-bench-") -> str:
    """A new empty directory for benchmark data (``base`` defaults to the system temp dir)."""
    if base is not None:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory tree if it exists."""
    shutil.rmtree(path, ignore_errors=True)


# -- timing ------------------------------------------------------------------------------------


def measure(
    contenders: Mapping[str, Callable[[], Any]],
    reps: int,
    setup: Callable[[str], Any] | None = None,
    warmup: int = 0,
) -> dict[str, list[float]]:
    """Time each contender ``reps`` times; returns the list of seconds per contender.

    ``warmup`` extra rounds run first and are not recorded: the first round of a write row
    is slow for everyone here (fresh memory and inode tables), and would waste a repetition.

    Contenders take turns inside each repetition and the starting contender rotates from
    one repetition to the next, so drift (disk writeback, a neighbour's load, thermal state)
    spreads over all of them instead of always hurting the one that runs first or last.
    ``setup(name)`` runs untimed before every run (clean up, sync, drop caches...).
    """
    names = list(contenders)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(-warmup, reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if setup is not None:
                setup(name)
            # Collect now so a collection triggered by the previous run's garbage does not
            # land inside this run's timing.
            gc.collect()
            start = time.perf_counter()
            contenders[name]()
            if rep >= 0:
                runs[name].append(time.perf_counter() - start)
    return runs


def measure_interleaved(
    steps: Mapping[str, Callable[[int], Any]],
    count: int,
    block: int,
    setup: Callable[[int], Any] | None = None,
    finish: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Time many small steps (a file, a bulk write), interleaved; returns seconds per block.

    Step ``i`` of every contender runs back to back (``steps[name](i)``, the starting
    contender rotating from step to step and from block to block), so a change of disk
    latency, which on a shared VM moves per-file times by tens of percent within seconds,
    hits every contender alike; with contenders taking turns a block at a time it decided
    which of them a burst hit.
    ``setup(b)`` runs untimed before block ``b`` (make directories, ``os.sync()``).
    ``finish[name]()`` runs after each block, timed and added to that contender's block:
    the step that makes durable what the contender left unsynced (its own files only: an
    ``os.sync()`` here would also flush, and charge one contender for, the others' data).
    Each contender's list holds one total per block, paired block by block with the others'.
    """
    names = list(steps)
    finish = finish or {}
    clock = time.perf_counter
    runs: dict[str, list[float]] = {name: [] for name in names}
    for first in range(0, count, block):
        number = first // block
        if setup is not None:
            setup(number)
        gc.collect()
        totals = dict.fromkeys(names, 0.0)
        for i in range(first, min(first + block, count)):
            # rotate with the block too: the first step after setup's sync is the fastest
            shift = (number + i - first) % len(names)
            for name in names[shift:] + names[:shift]:
                step = steps[name]
                start = clock()
                step(i)
                totals[name] += clock() - start
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            if name in finish:
                start = clock()
                finish[name]()
                totals[name] += clock() - start
        for name in names:
            runs[name].append(totals[name])
    return runs


def fsync_files(*paths: str) -> None:
    """``fsync`` each of ``paths`` that exists (a contender's own state, at a block's end)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- reports -----------------------------------------------------------------------------------


@dataclass
class Contender:
    """A column of the table: ``key`` in rows and JSON, ``label`` in the table."""

    key: str
    label: str
    description: str = ""


BEST = "best"
PAIRED_MEDIAN = "paired median"


@dataclass
class Ratio:
    """A ratio column ``numerator / denominator`` (lower is better).

    ``target``, when set, is the maximum allowed on rows that are not informational.
    ``statistic`` says how runs become one figure:

    * ``BEST``: best (lowest) seconds of one over best seconds of the other;
    * ``PAIRED_MEDIAN``: the median over repetitions of the ratio of the two runs of the
      same repetition (:func:`measure` runs contenders back to back in each one). A burst
      of disk latency then spoils one pair, which the median drops, instead of setting or
      missing a contender's best. Use it where a run's A/A control shows the best-of ratio
      moving by more than the target's margin.

    ``denominator`` may name several contenders that run the same thing (two instances of
    a baseline): a repetition's denominator is then their mean (paired), and the best-of
    denominator the best run of any of them (the harder figure to beat).
    """

    numerator: str
    denominator: str | tuple[str, ...]
    label: str
    target: float | None = None
    statistic: str = BEST

    @property
    def denominators(self) -> tuple[str, ...]:
        """The denominator's contender keys."""
        den = self.denominator
        return (den,) if isinstance(den, str) else tuple(den)

    @property
    def key(self) -> str:
        suffix = "" if self.statistic == BEST else f" ({self.statistic})"
        return f"{self.numerator}/{'+'.join(self.denominators)}{suffix}"


@dataclass
class Row:
    """One measured operation: seconds per contender plus what one run moved.

    ``nbytes`` turns seconds into MB/s, ``ops`` into ops/s (files, entries, stats...).
    Informational rows are shown and recorded but never held to a target.
    """

    name: str
    runs: dict[str, list[float]]
    nbytes: int | None = None
    ops: int | None = None
    ops_unit: str = "ops"
    informational: bool = False
    note: str = ""

    def seconds(self, key: str) -> float | None:
        """Best (lowest) seconds of a contender, or ``None`` if it did not run on this row.

        Best-of rather than median: the noise seen on these VMs is one-sided and bimodal
        (page-cache fills sometimes cost 3-10x more, whoever runs), so the minimum is the
        stable estimate of what each contender itself costs.
        """
        values = self.runs.get(key)
        return min(values) if values else None

    def ratio(self, ratio: Ratio) -> float | None:
        """The value of ``ratio`` on this row, or ``None`` if a side is missing."""
        nums = self.runs.get(ratio.numerator)
        dens = [self.runs.get(key) for key in ratio.denominators]
        if not nums or not all(dens):
            return None
        if ratio.statistic == PAIRED_MEDIAN:
            if any(len(runs) != len(nums) for runs in dens):
                raise ValueError(f"{self.name}: a paired ratio needs as many runs of "
                                 f"{ratio.numerator} as of {ratio.denominator}")
            return statistics.median(n * len(dens) / sum(d) for n, *d in zip(nums, *dens))
        den = min(min(runs) for runs in dens)
        return min(nums) / den if den else None

    def passes(self, ratio: Ratio) -> bool | None:
        """Whether the row meets the ratio's target; ``None`` when no target applies."""
        value = self.ratio(ratio)
        if ratio.target is None or self.informational or value is None:
            return None
        return value <= ratio.target


@dataclass
class Report:
    """Everything one benchmark run produced, ready for :func:`emit`."""

    name: str
    title: str
    contenders: list[Contender]
    ratios: list[Ratio]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    elapsed: float | None = None

    def add(self, row: Row) -> Row:
        """Append a row and show progress (benchmarks take minutes)."""
        self.rows.append(row)
        parts = []
        for c in self.contenders:
            s = row.seconds(c.key)
            if s is not None:
                parts.append(f"{c.key}={s:.3f}s")
        print(f"  {row.name}: " + ", ".join(parts), file=sys.stderr, flush=True)
        return row

    def all_pass(self) -> bool:
        """True when every targeted ratio on every non-informational row is met."""
        return all(row.passes(r) is not False for row in self.rows for r in self.ratios)

    def to_json(self) -> dict[str, Any]:
        """The report as plain data (seconds are best-of; the median and every run too)."""
        rows = []
        for row in self.rows:
            results = {}
            for c in self.contenders:
                s = row.seconds(c.key)
                if s is None:
                    continue
                entry: dict[str, Any] = {
                    "seconds": s,
                    "median_seconds": statistics.median(row.runs[c.key]),
                    "runs_seconds": row.runs[c.key],
                }
                if row.nbytes:
                    entry["mb_per_s"] = row.nbytes / s / MB
                if row.ops:
                    entry["ops_per_s"] = row.ops / s
                results[c.key] = entry
            ratios = {}
            for r in self.ratios:
                value = row.ratio(r)
                ratios[r.key] = {
                    "statistic": r.statistic,
                    "value": value,
                    "target": None if row.informational else r.target,
                    "pass": row.passes(r),
                }
            targeted = [p for p in (row.passes(r) for r in self.ratios) if p is not None]
            rows.append({
                "name": row.name,
                "informational": row.informational,
                "note": row.note,
                "bytes": row.nbytes,
                "ops": row.ops,
                "ops_unit": row.ops_unit,
                "results": results,
                "ratios": ratios,
                "pass": all(targeted) if targeted else None,
            })
        return {
            "benchmark": self.name,
            "title": self.title,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_seconds": self.elapsed,
            "statistic": "seconds are best (minimum) of runs; each ratio names its statistic "
                         "(best: ratio of best times; paired median: median of per-repetition "
                         "ratios); lower is better",
            "contenders": {c.key: {"label": " ".join(c.label.split()), "description": c.description}
                           for c in self.contenders},
            "parameters": self.parameters,
            "environment": self.environment,
            "notes": self.notes,
            "rows": rows,
            "all_pass": self.all_pass(),
        }


def environment() -> dict[str, Any]:
    """Facts about the machine that a reader of the JSON needs to compare runs."""
    import fsspec

    try:
        import aiofs

        aiofs_version = aiofs.__version__
    except Exception:  # the harness must still describe a broken checkout
        aiofs_version = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "fsspec": fsspec.__version__,
        "aiofs": aiofs_version,
        # Other processes on the machine (test suites...) are the main source of noise.
        "loadavg_at_start": os.getloadavg(),
    }


def _rate(row: Row, seconds: float) -> str:
    if row.nbytes and not row.ops:
        return f"{row.nbytes / seconds / MB:,.0f} MB/s"
    if row.ops:
        return f"{row.ops / seconds:,.0f} {row.ops_unit}/s"
    return ""


def print_table(report: Report) -> None:
    """Print the report as a table: best seconds and rate per contender, then ratios."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        # Piped output (CI logs, `| tee`) would otherwise be squeezed into 80 columns.
        console = Console(width=230)
    table = Table(title=escape(report.title), caption=escape("\n".join(report.notes)),
                  caption_justify="left",
                  show_lines=True)
    # Wrapped at a fixed width so that many ratio columns still get readable headers.
    table.add_column("operation", max_width=60)
    for c in report.contenders:
        table.add_column(c.label, justify="right")
    for r in report.ratios:
        head = r.label if r.target is None else f"{r.label}\n(target <= {r.target:.2f})"
        table.add_column(head, justify="right")
    for row in report.rows:
        label = escape(row.name) + ("\n[dim](informational)[/dim]" if row.informational else "")
        if row.note:
            label += f"\n[dim]{escape(row.note)}[/dim]"
        cells = [label]
        for c in report.contenders:
            s = row.seconds(c.key)
            cells.append("—" if s is None else f"{s:.3f} s\n{_rate(row, s)}")
        for r in report.ratios:
            value = row.ratio(r)
            verdict = row.passes(r)
            if value is None:
                cells.append("—")
            elif verdict is None:
                cells.append(f"{value:.2f}")
            elif verdict:
                cells.append(f"[green]{value:.2f} pass[/green]")
            else:
                cells.append(f"[bold red]{value:.2f} FAIL[/bold red]")
        table.add_row(*cells)
    console.print(table)


def write_json(report: Report) -> Path:
    """Write ``benchmarks/results/NAME.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{report.name}.json"
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return path


def emit(report: Report) -> int:
    """Print the table, write the JSON; exit status 0 when every target is met, else 1."""
    print_table(report)
    path = write_json(report)
    verdict = "all targets met" if report.all_pass() else "SOME TARGETS MISSED"
    print(f"{verdict}; results written to {path}")
    return 0 if report.all_pass() else 1
