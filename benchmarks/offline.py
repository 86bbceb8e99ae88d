"""``offline``: the Offline layer's cached reads, offline listings, drain to S3, outage detection.

Contenders and baselines, measured in the same run:

* ``offline``: ``Offline`` with its cache on the local disk;
* ``local``: ``LocalBackend`` alone reading the same file (raw local speed);
* ``s3fs``: s3fs ``put`` of the same 1,000 local files straight to the same moto S3 server
  (``moto[server]`` on 127.0.0.1, in this process);
* ``limit``: an absolute limit from the issue, shown as a time.

Targets (issue 7):

* cached read throughput at least 0.8x raw LocalBackend (offline / local time <= 1.25);
* ``ls -l`` (``ls(detail=True)``) of a cached 10,000-file directory while unplugged: < 100 ms;
* drain of 1 GiB in 1,000 queued files to moto S3 at least 0.8x the speed of s3fs ``put`` of
  the same files directly (offline / s3fs time <= 1.25);
* offline detected in under 1 s after unplugging (default ``heartbeat_interval``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from benchmarks.harness import (
    MIB, Contender, Ratio, Report, Row, emit, environment, measure, mixed_bytes, remove_tree,
    scratch_dir, sync,
)

NAME = "offline"
SUMMARY = ("Offline layer: cached read MB/s vs LocalBackend, ls of 10k files unplugged, "
           "drain of 1 GiB to moto S3 vs s3fs put, outage detection time")

READ_TARGET = 1.25    # offline / local time (>= 0.8x throughput)
DRAIN_TARGET = 1.25   # offline drain / s3fs put time
LS_LIMIT = 0.100      # seconds
DETECT_LIMIT = 1.0    # seconds


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {NAME}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--read-mib", type=int, default=512, help="cached file size (MiB)")
    parser.add_argument("--files", type=int, default=1000, help="files in the drain")
    parser.add_argument("--file-kib", type=int, default=1024, help="size of each drained file")
    parser.add_argument("--listing", type=int, default=10_000, help="files in the listed dir")
    parser.add_argument("--reps", type=int, default=3, help="runs per contender")
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run")
    args = parser.parse_args(argv)
    if args.quick:
        args.read_mib, args.files, args.file_kib, args.listing, args.reps = 64, 100, 256, 2000, 1
    return args


def run(args: argparse.Namespace) -> Report:
    started = time.perf_counter()
    drain_bytes = args.files * args.file_kib * 1024
    report = Report(
        name=NAME,
        title=f"{NAME}: Offline(remote) with its cache on the local disk",
        contenders=[
            Contender("offline", "Offline", "aiofs Offline layer, default options"),
            Contender("local", "LocalBackend", "aiofs LocalBackend alone, same disk"),
            Contender("s3fs", "s3fs put\n(direct)", "s3fs put of the same files to the same moto server"),
            Contender("limit", "limit\n(issue 7)", "an absolute target, as a time"),
        ],
        ratios=[Ratio("offline", "local", "offline /\nlocal", READ_TARGET),
                Ratio("offline", "s3fs", "offline /\ns3fs", DRAIN_TARGET),
                Ratio("offline", "limit", "offline /\nlimit", 1.0)],
        parameters={"read_bytes": args.read_mib * MIB, "drain_files": args.files,
                    "drain_bytes": drain_bytes, "listing_files": args.listing, "reps": args.reps},
        environment=environment(),
        notes=["Best of runs; ratios divide best times (lower is better). MB = 10^6 bytes. "
               "The moto S3 server runs in this process on 127.0.0.1 for both contenders."],
    )
    base = scratch_dir(args.dir, prefix="aiofs-bench-offline-")
    print(f"{NAME}: scratch data in {base}", flush=True)
    try:
        _cached_reads(report, args, base)
        _listing(report, args, base)
        _detection(report, args, base)
        _drain(report, args, base, drain_bytes)
    finally:
        remove_tree(base)
        sync()
    report.elapsed = time.perf_counter() - started
    report.environment["loadavg_at_end"] = os.getloadavg()
    report.notes.append(f"Total benchmark time {report.elapsed:.0f} s; 1-minute load average "
                        f"{report.environment['loadavg_at_start'][0]:.1f} at start, "
                        f"{report.environment['loadavg_at_end'][0]:.1f} at end on {os.cpu_count()} CPUs.")
    return report


def _cached_reads(report: Report, args, base: str) -> None:
    from aiofs.backends import LocalBackend
    from aiofs.layers import Offline

    size = args.read_mib * MIB
    data = mixed_bytes(size)
    raw = LocalBackend(os.path.join(base, "raw"), fsync=False, skip_instance_cache=True)
    raw.pipe_file("/big.bin", data)
    remote = LocalBackend(os.path.join(base, "remote"), fsync=False, skip_instance_cache=True)
    remote.pipe_file("/big.bin", data)
    fs = Offline(fs=remote, cache_dir=os.path.join(base, "cache-read"))
    assert fs.cat_file("/big.bin") == data  # fetched and cached
    del data
    sync()

    def read_all(target):
        def go():
            with target.open("/big.bin", "rb") as f:
                while f.read(MIB):
                    pass
        return go

    report.add(Row(f"cached read of a {args.read_mib} MiB file (open + 1 MiB reads, page cache warm)",
                   measure({"offline": read_all(fs), "local": read_all(raw)}, args.reps, warmup=1),
                   nbytes=size))
    fs.close()


def _listing(report: Report, args, base: str) -> None:
    from aiofs.backends import LocalBackend
    from aiofs.layers import Offline
    from aiofs.testing.faults import FaultInjectingFileSystem

    remote = LocalBackend(os.path.join(base, "remote-ls"), fsync=False, skip_instance_cache=True)
    remote.pipe({f"/many/f{i:05d}.txt": b"x" * (i % 100) for i in range(args.listing)})
    flaky = FaultInjectingFileSystem(fs=remote, failure_rate=0.0)
    fs = Offline(fs=flaky, cache_dir=os.path.join(base, "cache-ls"))
    assert len(fs.ls("/many")) == args.listing  # seen once while online
    flaky.unplug()
    fs.probe()
    assert not fs.online

    def ls_long():
        entries = fs.ls("/many", detail=True)
        assert len(entries) == args.listing and "mtime" in entries[0]

    runs = measure({"offline": ls_long}, max(args.reps, 5), warmup=1)
    runs["limit"] = [LS_LIMIT]
    report.add(Row(f"ls -l of a cached {args.listing:,}-file directory while unplugged", runs,
                   ops=args.listing, ops_unit="entries"))
    fs.close()


def _detection(report: Report, args, base: str) -> None:
    from aiofs.backends import LocalBackend
    from aiofs.layers import Offline
    from aiofs.testing.faults import FaultInjectingFileSystem

    remote = LocalBackend(os.path.join(base, "remote-detect"), fsync=False, skip_instance_cache=True)
    flaky = FaultInjectingFileSystem(fs=remote, failure_rate=0.0)
    fs = Offline(fs=flaky, cache_dir=os.path.join(base, "cache-detect"))
    times = []
    for rep in range(max(args.reps, 3)):
        fs.pipe_file(f"/note{rep}.txt", b"working")  # in use: the heartbeat runs
        fs.sync(wait=True)
        assert fs.online
        start = time.perf_counter()
        flaky.unplug()
        while fs.online:  # poll the flag every 2 ms: the resolution of the measured delay
            time.sleep(0.002)
        times.append(time.perf_counter() - start)
        flaky.plug()
        fs.probe()
    report.add(Row("offline detected after unplugging (idle, in use within the last minute)",
                   {"offline": times, "limit": [DETECT_LIMIT]}))
    fs.close()


def _drain(report: Report, args, base: str, total: int) -> None:
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    from aiofs.layers import Offline

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        size = args.file_kib * 1024
        blob = mixed_bytes(total)
        files = {f"f{i:05d}.bin": blob[i * size:(i + 1) * size] for i in range(args.files)}
        del blob
        source = os.path.join(base, "drain-source")
        os.makedirs(source)
        for name, data in files.items():
            with open(os.path.join(source, name), "wb") as f:
                f.write(data)
        del files
        sync()
        state = {"n": 0}

        def s3():
            return s3fs.S3FileSystem(key="test", secret="test", skip_instance_cache=True,
                                     client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})

        def setup(name):
            state["n"] += 1
            bucket = f"bench-{name}-{state['n']}"
            client.create_bucket(Bucket=bucket)
            state["bucket"] = bucket
            if name == "offline":
                cache = os.path.join(base, f"cache-drain-{state['n']}")
                fs = Offline(fs=s3(), cache_dir=cache, syncer=False)  # queue only, upload later
                for name_ in sorted(os.listdir(source)):
                    fs.put_file(os.path.join(source, name_), f"{bucket}/drain/{name_}")
                assert fs.queue_totals()["count"] == args.files
                state["fs"] = fs
            sync()

        def offline_drain():
            fs = state["fs"]
            fs.sync(wait=True)
            fs.close()

        def s3fs_put():
            names = sorted(os.listdir(source))
            s3().put([os.path.join(source, n) for n in names],
                     [f"{state['bucket']}/drain/{n}" for n in names])

        runs = measure({"offline": offline_drain, "s3fs": s3fs_put}, args.reps, setup)
        check = s3()
        listing = check.ls(f"{state['bucket']}/drain", detail=True)
        assert len(listing) == args.files and sum(e["size"] for e in listing) == total
        report.add(Row(f"drain of {total / MIB:,.0f} MiB in {args.files:,} queued files to moto S3",
                       runs, nbytes=total))
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    """Run the benchmark, print the table, write ``benchmarks/results/offline.json``."""
    return emit(run(parse_args(argv)))
