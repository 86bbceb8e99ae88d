"""``dedup``: Dedup(Compress(LocalBackend)) against restic, on the mixed set.

Contenders, all on the same local disk, measured in the same run:

* ``dedup``: ``Dedup(Compress(LocalBackend(store)))`` with default options, a fresh store
  per run, the file written with ``open('wb')`` in 1 MiB writes, timed until durable;
* ``restic``: ``restic backup FILE`` into a fresh repository (``restic init`` untimed;
  Debian's ``restic``, installed by ``scripts/setup.sh dev``), timed until durable;
* ``local``: ``LocalBackend`` alone (the disk's own cost; informational).

Targets (from the issue):

* first ingest throughput at least 2x restic's ``backup`` (dedup / restic time <= 0.5);
* after overwriting 64 scattered 80 KiB regions and writing the file again, store growth at
  most 1/4 of restic's repository growth for the same edit;
* 30 versions of a 100 MB file written to 30 paths, each with one contiguous 1 MB region
  rewritten at a random offset (new random bytes), stored in at most 1.5x the size of one
  version (the whole store, compressed, against the 100 MB of one version; the growth
  against the stored first version is printed too);
* 1 GiB ingested as 8 files of 128 MiB creates at most 100 objects in the backend (files
  and directories under the store root, all of ``.aiofs/`` included).

A chunk-size study (``avg_size`` 16/48/128 KiB) on the edit scenario prints how the default
was chosen (``docs/formats/dedup.md``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import time

from benchmarks.harness import (
    KIB, MB, MIB, Contender, Ratio, Report, Row, emit, environment, measure, mixed_blocks,
    remove_tree, scratch_dir, shell, sync,
)

NAME = "dedup"
SUMMARY = ("Dedup(Compress(LocalBackend)) vs restic backup: ingest MB/s, growth after an edit, "
           "30 versions, objects per GiB")

INGEST_TARGET = 0.5        # dedup time / restic time
EDIT_GROWTH_TARGET = 0.25  # dedup growth / restic growth
VERSIONS_TARGET = 1.5      # store after 30 versions / store after one
OBJECTS_TARGET = 100


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {NAME}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512, help="ingest file size (MiB)")
    parser.add_argument("--reps", type=int, default=3, help="runs per contender")
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 run, smaller scenarios")
    args = parser.parse_args(argv)
    args.version_mb, args.versions, args.big_files, args.big_file_mib = 100, 30, 8, 128
    if args.quick:
        args.size_mib, args.reps = 64, 1
        args.version_mb, args.versions, args.big_files, args.big_file_mib = 20, 5, 2, 64
    return args


def tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            total += os.path.getsize(os.path.join(dirpath, name))
    return total


def tree_objects(path: str) -> int:
    """Files and directories below ``path`` (not counting ``path`` itself)."""
    count = 0
    for _, dirnames, filenames in os.walk(path):
        count += len(dirnames) + len(filenames)
    return count


def edit(data: bytes, regions: int, region_size: int, seed: int) -> bytes:
    """``data`` with ``regions`` scattered regions overwritten by new random bytes."""
    rng = random.Random(seed)
    out = bytearray(data)
    span = len(data) // regions
    for i in range(regions):
        offset = i * span + rng.randrange(0, max(1, span - region_size))
        out[offset : offset + region_size] = rng.randbytes(region_size)
    return bytes(out)


class Restic:
    """A restic repository in ``repo`` (password from the environment, no cache)."""

    def __init__(self, repo: str):
        self.repo = repo
        self.env = {**os.environ, "RESTIC_PASSWORD": "aiofs-benchmark", "RESTIC_REPOSITORY": repo,
                    "RESTIC_CACHE_DIR": repo + "-cache"}

    def run(self, *args: str) -> None:
        subprocess.run(["restic", *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        remove_tree(self.repo)
        remove_tree(self.repo + "-cache")
        self.run("init")

    def backup(self, path: str) -> None:
        self.run("backup", "--quiet", path)


def run(args: argparse.Namespace) -> tuple[Report, bool]:
    started = time.perf_counter()
    total = args.size_mib * MIB
    report = Report(
        name=NAME,
        title=(f"{NAME}: {args.size_mib} MiB mixed file (half random, half text); "
               "Dedup(Compress(LocalBackend)) vs restic backup"),
        contenders=[
            Contender("dedup", "Dedup(Compress\n(LocalBackend))", "aiofs, default options"),
            Contender("restic", "restic\nbackup", "restic backup FILE into a fresh repository"),
            Contender("local", "LocalBackend", "aiofs LocalBackend alone (no dedup, no zstd)"),
        ],
        ratios=[Ratio("dedup", "restic", "dedup /\nrestic", INGEST_TARGET),
                Ratio("dedup", "local", "dedup /\nlocal")],
        parameters={"file_bytes": total, "reps": args.reps,
                    "data": "mixed set: 1 MiB blocks alternating seeded random bytes and "
                            "text-like lines, random first"},
        environment=environment(),
        notes=[f"dedup / restic is a ratio of times: <= {INGEST_TARGET} means at least "
               f"{1 / INGEST_TARGET:.0f}x restic's throughput. Best of {args.reps} runs after one "
               "untimed warm-up round. Every run ends with os.sync(). MB = 10^6 bytes."],
    )
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed: run scripts/setup.sh dev (installs Debian restic)")
    base = scratch_dir(args.dir, prefix="aiofs-bench-dedup-")
    print(f"{NAME}: scratch data in {base}", flush=True)
    try:
        ok = _run_rows(report, args, base, total)
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


def _stack(store: str, cache: str, **options):
    from aiofs.backends import LocalBackend
    from aiofs.layers import Compress, Dedup
    return Dedup(fs=Compress(fs=LocalBackend(store, skip_instance_cache=True),
                             cache_dir=cache + "-compress"), cache_dir=cache, **options)


def _write(fs, path: str, blocks) -> None:
    with fs.open(path, "wb") as f:
        for block in blocks:
            f.write(block)


def _run_rows(report: Report, args, base: str, total: int) -> bool:
    from aiofs.backends import LocalBackend

    blocks = list(mixed_blocks(total))
    data = b"".join(blocks)
    source = os.path.join(base, "data", "mixed.bin")
    os.makedirs(os.path.dirname(source))
    with open(source, "wb") as f:
        f.write(data)
    store, cache = os.path.join(base, "store"), os.path.join(base, "cache")
    restic = Restic(os.path.join(base, "restic"))
    raw = os.path.join(base, "raw")

    # -- first ingest ------------------------------------------------------------------------
    def setup(key):
        for path in (store, cache, cache + "-compress", raw):
            remove_tree(path)
        if key == "restic":
            restic.init()
            shell(f"cat {source} > /dev/null")
        sync()

    def dedup_ingest():
        _write(_stack(store, cache), "/mixed.bin", blocks)
        sync()

    def restic_ingest():
        restic.backup(source)
        sync()

    def local_ingest():
        _write(LocalBackend(raw, skip_instance_cache=True), "/mixed.bin", blocks)
        sync()

    report.add(Row(f"first ingest of {args.size_mib} MiB (1 MiB writes), until durable",
                   measure({"dedup": dedup_ingest, "restic": restic_ingest, "local": local_ingest},
                           args.reps, setup, warmup=1), nbytes=total,
                   note="fresh store / repository per run"))

    sizes: list[dict] = []

    # -- growth after an edit ------------------------------------------------------------------
    edited = edit(data, 64, 80 * KIB, seed=7)
    for path in (store, cache, cache + "-compress"):
        remove_tree(path)
    fs = _stack(store, cache)
    _write(fs, "/mixed.bin", blocks)
    sync()
    dedup_before = tree_bytes(store)
    fs.pipe_file("/mixed.bin", edited)
    sync()
    dedup_growth = tree_bytes(store) - dedup_before
    assert fs.cat_file("/mixed.bin") == edited
    restic.init()
    restic.backup(source)
    restic_before = tree_bytes(restic.repo)
    with open(source, "wb") as f:
        f.write(edited)
    restic.backup(source)
    restic_growth = tree_bytes(restic.repo) - restic_before
    sizes.append({"name": "store growth after 64 scattered 80 KiB edits",
                  "dedup": dedup_growth, "restic": restic_growth,
                  "ratio": dedup_growth / restic_growth, "target": EDIT_GROWTH_TARGET})

    # chunk-size study (informational): the same edit at other average chunk sizes
    study = {}
    for avg, low, high in ((16, 4, 64), (48, 16, 256), (128, 32, 512)):
        s, c = os.path.join(base, f"study{avg}"), os.path.join(base, f"study{avg}-cache")
        layer = _stack(s, c, min_size=f"{low}KiB", avg_size=f"{avg}KiB", max_size=f"{high}KiB")
        t0 = time.perf_counter()
        _write(layer, "/mixed.bin", blocks)
        sync()
        seconds = time.perf_counter() - t0
        before = tree_bytes(s)
        layer.pipe_file("/mixed.bin", edited)
        sync()
        study[avg] = (seconds, tree_bytes(s) - before, None)
        remove_tree(s), remove_tree(c), remove_tree(c + "-compress")

    # -- 30 versions ---------------------------------------------------------------------------
    for path in (store, cache, cache + "-compress"):
        remove_tree(path)
    fs = _stack(store, cache)
    version_bytes = args.version_mb * MB
    rng = random.Random(30)
    current = bytearray(data[:version_bytes] if version_bytes <= len(data)
                        else b"".join(mixed_blocks(version_bytes, seed=3))[:version_bytes])
    fs.pipe_file("/versions/v00.bin", bytes(current))
    sync()
    one_version = tree_bytes(store)
    for v in range(1, args.versions):
        offset = rng.randrange(0, version_bytes - MB)
        current[offset : offset + MB] = rng.randbytes(MB)
        fs.pipe_file(f"/versions/v{v:02d}.bin", bytes(current))
    sync()
    all_versions = tree_bytes(store)
    assert fs.cat_file(f"/versions/v{args.versions - 1:02d}.bin") == bytes(current)
    sizes.append({"name": f"{args.versions} versions of a {args.version_mb} MB file (1 MB edited each)",
                  "dedup": all_versions, "one_version": version_bytes,
                  "ratio": all_versions / version_bytes, "target": VERSIONS_TARGET})
    report.notes.append(
        f"{args.versions} versions: the store holds {all_versions / MB:.1f} MB; the store after the "
        f"first version held {one_version / MB:.1f} MB (compressed), so the other "
        f"{args.versions - 1} versions added {(all_versions - one_version) / MB:.1f} MB "
        f"({all_versions / one_version:.2f}x the stored first version; informational).")

    # -- objects per GiB -----------------------------------------------------------------------
    for path in (store, cache, cache + "-compress"):
        remove_tree(path)
    fs = _stack(store, cache)
    big = args.big_file_mib * MIB
    for i in range(args.big_files):
        _write(fs, f"/big/f{i}.bin", mixed_blocks(big, seed=100 + i))
    sync()
    objects = tree_objects(store)
    sizes.append({"name": f"objects after {args.big_files} files of {args.big_file_mib} MiB",
                  "dedup": objects, "ratio": None, "target": OBJECTS_TARGET})

    ok = _print_sizes(report, sizes, study)
    return ok


def _print_sizes(report: Report, sizes: list[dict], study: dict) -> bool:
    ok = True
    print("\nstorage results (bytes on disk; lower is better)")
    for item in sizes:
        if item["ratio"] is None:
            passed = item["dedup"] <= item["target"]
            line = f"  {item['name']}: {item['dedup']} objects (target <= {item['target']})"
        else:
            passed = item["ratio"] <= item["target"]
            other = item.get("restic", item.get("one_version"))
            label = "restic" if "restic" in item else "one version"
            line = (f"  {item['name']}: dedup {item['dedup'] / MB:.1f} MB vs {label} "
                    f"{other / MB:.1f} MB = {item['ratio']:.3f} (target <= {item['target']})")
        item["pass"] = passed
        ok &= passed
        print(line + ("  PASS" if passed else "  FAIL"))
        report.notes.append(line.strip() + (" PASS" if passed else " FAIL"))
    print("chunk-size study (edit scenario): avg KiB -> ingest s, growth MB")
    for avg, (seconds, growth, _) in study.items():
        line = f"  avg_size {avg} KiB: ingest {seconds:.2f} s, growth after edit {growth / MB:.1f} MB"
        print(line)
        report.notes.append("chunk-size study: " + line.strip())
    report.parameters["storage_results"] = sizes
    return ok


def main(argv: list[str]) -> int:
    """Run the benchmark, print the tables, write ``benchmarks/results/dedup.json``."""
    report, extra_ok = run(parse_args(argv))
    status = emit(report)
    if not extra_ok:
        print("SOME TARGETS MISSED (storage results; see above)")
    return 0 if status == 0 and extra_ok else 1
