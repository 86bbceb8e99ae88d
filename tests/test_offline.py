"""Offline: the shipped suites over a flaky network (FaultInjectingFileSystem, 5 % failures,
over LocalBackend) with the remote checked against the model after a drain; the disconnect
scenario (1,000 operations unplugged, conflicts on purpose); coalescing, offline reads and
listings, revalidation, range caching, eviction, pins, the dirty-data quota, conflict
policies, status, restarts and two processes sharing a cache directory."""

from __future__ import annotations

import multiprocessing
import os
import posixpath
import random
import threading
import time

import pytest
from hypothesis.stateful import run_state_machine_as_test

from aiofs import LocalBackend
from aiofs.errors import InvalidArgument, StorageQuotaExceeded, SyncFailed
from aiofs.layers import Offline
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.counting import CountingFileSystem
from aiofs.testing.faults import ERROR_KINDS, FaultInjectingFileSystem
from aiofs.testing.stateful import FilesystemModel, stateful_settings

FAILURE_RATE = 0.05
SYNC_TIMEOUT = 120  # a queue that stops draining fails its test instead of hanging the suite


def flaky_stack(tmp_path, seed: int = 0, failure_rate: float = FAILURE_RATE, **options):
    """Offline over a 5 %-flaky "network" over a local disk; returns (offline, flaky, disk)."""
    disk = LocalBackend(str(tmp_path / "remote"), fsync=False)
    flaky = FaultInjectingFileSystem(fs=disk, failure_rate=failure_rate, seed=seed)
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    options.setdefault("fsync", False)
    return Offline(fs=flaky, **options), flaky, disk


def remote_files(disk, root: str = "") -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file on the remote disk below ``root``."""
    base = disk._strip_protocol(root).strip("/")
    out = {}
    for name in disk.find(root):
        rel = disk._strip_protocol(name).strip("/")
        if base:
            rel = rel[len(base) + 1:]
        out[rel] = disk.cat_file(name)
    return out


# -- the shipped suites ------------------------------------------------------------------------


class Closing:
    def cleanup_fs(self, fs, root):
        try:
            super().cleanup_fs(fs, root)
            fs.sync(wait=True, timeout=SYNC_TIMEOUT)
        finally:
            fs.close()


class TestOfflineAbstract(Closing, FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return flaky_stack(tmp_path, seed=len(str(tmp_path)))[0], "/data"


class DrainBeforeTargetReads:
    """The conformance suite reads the target right after a write (to check that logical
    sizes leave the target's entries alone). Below Offline the target is the network: it has
    the file once the queue drained, and a flaky one fails some calls."""

    def test_logical_sizes(self, fs, fs_path):
        target = fs.fs
        real_ls = target.ls

        def ls_after_drain(path, detail=True, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return real_ls(path, detail=detail, **kwargs)  # the syncer's own listings
            fs.sync(wait=True, timeout=SYNC_TIMEOUT)
            for attempt in range(20):
                try:
                    return real_ls(path, detail=detail, **kwargs)
                except tuple(ERROR_KINDS.values()):  # every kind the flaky target injects
                    continue
            raise AssertionError("the flaky target failed 20 times in a row")

        target.ls = ls_after_drain
        try:
            super().test_logical_sizes(fs, fs_path)
        finally:
            del target.ls


class TestOfflineConformance(Closing, DrainBeforeTargetReads, ConformanceSuite):
    def make_fs(self, tmp_path):
        return flaky_stack(tmp_path, seed=len(str(tmp_path)))[0], ""


class RemoteCheckedModel(FilesystemModel):
    """The stateful model, plus: after each example the queue drains and the remote disk
    holds exactly the model's files."""

    def teardown(self):
        try:
            self.fs.sync(wait=True, timeout=SYNC_TIMEOUT)
            disk = self.fs.fs.fs
            assert remote_files(disk, self.root) == self.files if disk.exists(self.root) \
                else self.files == {}
        finally:
            super().teardown()


def test_stateful_model_over_a_flaky_network(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, seed=3)
    counter = iter(range(10**9))
    built = []

    def factory():
        built.append(1)
        return fs, f"/run{next(counter)}"

    machine = type("OfflineModel", (RemoteCheckedModel,), {"factory": staticmethod(factory)})
    examples = int(os.environ.get("AIOFS_STATEFUL_EXAMPLES", "500"))
    try:
        run_state_machine_as_test(machine, settings=stateful_settings(examples, 10))
    finally:
        fs.close()
    assert len(built) >= examples
    assert flaky.failures > 50  # the network really was flaky


# -- the disconnect scenario --------------------------------------------------------------------


def test_disconnect_thousand_operations_then_drain(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, seed=11)
    rng = random.Random(5)
    model: dict[str, bytes] = {}
    # a starting tree, uploaded while online
    for i in range(40):
        path = f"/w/d{i % 4}/f{i}.txt"
        model[path] = rng.randbytes(rng.randrange(0, 3000))
        fs.pipe_file(path, model[path])
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert remote_files(disk, "/w") == {k[3:]: v for k, v in model.items()}
    fs.ls("/w", detail=False)
    for d in range(4):
        fs.ls(f"/w/d{d}")
    conflicted = sorted(model)[:5]

    flaky.unplug()
    fs.ls("/w")  # listings and cached reads keep working
    # someone else edits five files on the remote while we are offline ...
    theirs = {}
    for path in conflicted:
        theirs[path] = b"their edit of " + path.encode()
        disk.pipe_file(path, theirs[path])
    # ... and we edit the same five here
    for path in conflicted:
        model[path] = b"our edit of " + path.encode()
        fs.pipe_file(path, model[path])
    ops = {"write": 0, "overwrite": 0, "delete": 0, "rename": 0, "mkdir": 0, "read": 0}
    names = [f"/w/d{rng.randrange(6)}/n{i}.bin" for i in range(300)]
    for step in range(1000):
        kind = rng.choice(("write", "write", "overwrite", "delete", "rename", "mkdir", "read"))
        candidates = sorted(p for p in model if p not in conflicted)
        if kind == "write" or not candidates:
            path = rng.choice(names)
            model[path] = rng.randbytes(rng.randrange(0, 5000))
            if rng.random() < 0.5:
                fs.pipe_file(path, model[path])
            else:
                with fs.open(path, "wb") as f:
                    f.write(model[path])
            kind = "write"
        elif kind == "overwrite":
            path = rng.choice(candidates)
            model[path] = rng.randbytes(rng.randrange(0, 5000))
            fs.pipe_file(path, model[path])
        elif kind == "delete":
            path = rng.choice(candidates)
            fs.rm(path)
            del model[path]
        elif kind == "rename":
            src = rng.choice(candidates)
            dst = rng.choice(names)
            if dst in conflicted or dst == src:
                continue
            fs.mv(src, dst)
            model[dst] = model.pop(src)
        elif kind == "mkdir":
            fs.makedirs(f"/w/e{rng.randrange(5)}", exist_ok=True)
        else:
            path = rng.choice(candidates)
            assert fs.cat_file(path) == model[path]
        ops[kind] += 1
    assert not fs.online
    assert fs.queue_totals()["count"] > 0
    with pytest.raises(SyncFailed):
        fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    listed = {e["name"]: e["size"] for e in fs.find("/w", detail=True).values()}
    assert listed == {k: len(v) for k, v in model.items()}

    flaky.plug()
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert fs.queue_totals()["count"] == 0
    on_remote = remote_files(disk, "/w")
    copies = {k: v for k, v in on_remote.items() if "(conflicted copy " in k}
    plain = {k: v for k, v in on_remote.items() if k not in copies}
    expected = {k[3:]: v for k, v in model.items()}
    for path in conflicted:  # the remote's version stays at the path
        expected[path[3:]] = theirs[path]
    assert plain == expected
    assert sorted(copies.values()) == sorted(b"our edit of " + p.encode() for p in conflicted)
    for name in copies:
        assert name.endswith(".txt") and f" {fs.host})" in name
    status = fs.status()
    assert {c["path"] for c in status["conflicts"]} == set(conflicted)
    assert all(c["outcome"] == "kept-both" for c in status["conflicts"])
    assert min(ops.values()) > 50
    fs.close()


# -- behaviour ---------------------------------------------------------------------------------


def test_writes_coalesce_and_a_local_only_file_costs_nothing(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0)
    flaky.unplug()
    assert not fs.probe()  # known offline: the syncer starts no upload to coalesce against
    for i in range(20):
        fs.pipe_file("/a.txt", b"v%d" % i)
    assert fs.queue_totals()["count"] == 1
    fs.pipe_file("/tmp.txt", b"scratch")
    fs.rm("/tmp.txt")
    assert fs.queue_totals()["count"] == 1
    flaky.plug()
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert flaky.call_counts["put_file"] == 1
    assert disk.cat_file("/a.txt") == b"v19" and not disk.exists("/tmp.txt")
    fs.close()


def test_offline_reads_listings_and_misses(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0)
    disk.pipe_file("/docs/cached.txt", b"cached")
    disk.pipe_file("/docs/cold.txt", b"cold")
    assert fs.cat_file("/docs/cached.txt") == b"cached"
    assert sorted(fs.ls("/docs", detail=False)) == ["/docs/cached.txt", "/docs/cold.txt"]
    assert fs.status("/docs/cold.txt")["file"]["state"] == "not cached"
    flaky.unplug()
    assert fs.cat_file("/docs/cached.txt") == b"cached"
    assert {e["name"]: e["size"] for e in fs.ls("/docs")} == {"/docs/cached.txt": 6, "/docs/cold.txt": 4}
    with pytest.raises(SyncFailed) as info:
        fs.cat_file("/docs/cold.txt")
    assert info.value.code == "SYNC_FAILED" and "/docs/cold.txt" in str(info.value)
    with pytest.raises(FileNotFoundError):
        fs.info("/docs/never.txt")  # the complete listing proves it absent
    fs.close()


def test_offline_detected_and_back_online_by_the_probe(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, probe_interval=0.05,
                                  heartbeat_interval=0.05)
    fs.pipe_file("/x", b"x")
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    flaky.unplug()
    for _ in range(6000):  # the heartbeat notices; a liveness bound (~60 s), not a timing target
        if not fs.online:
            break
        fs.info("/x")
        time.sleep(0.01)  # poll: the heartbeat thread flips the flag
    assert not fs.online
    fs.pipe_file("/y", b"y")
    flaky.plug()
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert fs.online and disk.cat_file("/y") == b"y"
    fs.close()


def test_reads_revalidate_against_the_remote(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, revalidate_after=0.0)
    disk.pipe_file("/f", b"one")
    assert fs.cat_file("/f") == b"one"
    disk.pipe_file("/f", b"two!")
    assert fs.cat_file("/f") == b"two!"
    disk.rm("/f")
    assert not fs.exists("/f")
    fs.close()


def test_stale_cache_is_served_until_revalidation_is_due(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, revalidate_after=3600)
    disk.pipe_file("/f", b"one")
    assert fs.cat_file("/f") == b"one"
    disk.pipe_file("/f", b"two!")
    assert fs.cat_file("/f") == b"one"  # within revalidate_after: no remote call
    fs.invalidate_cache("/f")
    assert fs.cat_file("/f") == b"two!"
    fs.close()


def test_large_files_are_fetched_and_cached_by_blocks(tmp_path):
    disk = LocalBackend(str(tmp_path / "remote"), fsync=False)
    counting = CountingFileSystem(fs=disk)
    fs = Offline(fs=counting, cache_dir=str(tmp_path / "cache"), whole_file_limit=100_000,
                 block_size=65536, fsync=False)
    data = random.Random(1).randbytes(1_000_000)
    disk.pipe_file("/big", data)
    counting.reset()
    assert fs.cat_file("/big", 300_000, 300_100) == data[300_000:300_100]
    assert counting.bytes_read == 65536
    assert fs.status("/big")["file"]["state"] == "partial"
    assert fs.cat_file("/big", 300_010, 300_020) == data[300_010:300_020]
    assert counting.bytes_read == 65536  # served from the cached block
    with fs.open("/big", "rb") as f:
        f.seek(999_990)
        assert f.read() == data[999_990:]
    assert fs.cat_file("/big") == data
    assert fs.status("/big")["file"]["state"] == "cached"
    assert counting.bytes_read <= len(data) + 65536
    fs.close()


def test_eviction_is_lru_of_clean_unpinned_data(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, max_cache_bytes=25_000)
    for i in range(5):
        disk.pipe_file(f"/c/{i}", bytes([i]) * 10_000)
    disk.pipe_file("/p/kept", b"k" * 10_000)
    fs.pin("/p")
    for i in range(5):
        assert fs.cat_file(f"/c/{i}") == bytes([i]) * 10_000
        fs._journal.db().execute("UPDATE entries SET accessed = ? WHERE path = ?", (time.time() - 100 + i, f"/c/{i}"))
    report = fs.evict()
    states = {p: fs.status(p)["file"]["state"] for p in [f"/c/{i}" for i in range(5)] + ["/p/kept"]}
    assert states["/p/kept"] == "cached"  # pinned
    assert states["/c/4"] == "cached" and states["/c/0"] == "not cached"  # least recently used go
    assert report["cached_bytes"] <= 25_000
    assert fs.cat_file("/c/0") == bytes([0]) * 10_000  # evicted data comes back from the remote
    fs.close()


def test_old_clean_data_is_evicted_dirty_data_never(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, max_age_days=30)
    disk.pipe_file("/old", b"o" * 100)
    fs.cat_file("/old")
    flaky.unplug()
    assert not fs.probe()
    fs.pipe_file("/dirty", b"d" * 100)
    fs._journal.db().execute("UPDATE entries SET accessed = 1")
    fs.evict()
    assert fs.status("/old")["file"]["state"] == "not cached"
    assert fs.status("/dirty")["file"]["state"] == "dirty"
    assert fs.cat_file("/dirty") == b"d" * 100
    fs.close()


def test_dirty_data_at_the_cap_waits_then_fails(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, max_cache_bytes=10_000,
                                  quota_wait=0.2)
    flaky.unplug()
    assert not fs.probe()
    fs.pipe_file("/a", b"a" * 6000)
    with pytest.raises(StorageQuotaExceeded) as info:
        fs.pipe_file("/b", b"b" * 6000)
    assert info.value.code == "STORAGE_QUOTA_EXCEEDED"
    with pytest.raises(StorageQuotaExceeded):
        with fs.open("/c", "wb") as f:
            f.write(b"c" * 6000)
    assert not fs.exists("/b") and not fs.exists("/c")
    assert fs.cat_file("/a") == b"a" * 6000
    flaky.plug()
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    fs.pipe_file("/b", b"b" * 6000)  # uploaded data is clean: room again
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert disk.cat_file("/b") == b"b" * 6000
    fs.close()


@pytest.mark.parametrize("policy, at_path, copies", [
    ("local-wins", b"ours", 0), ("remote-wins", b"theirs", 0), ("newer-wins", b"theirs", 0),
    ("keep-both", b"theirs", 1),
])
def test_conflict_policies(tmp_path, policy, at_path, copies):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, conflict_policy=policy)
    fs.pipe_file("/doc.md", b"base")
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    flaky.unplug()
    fs.pipe_file("/doc.md", b"ours")
    time.sleep(0.05)  # so the remote edit's mtime is strictly later (newer-wins compares them)
    disk.pipe_file("/doc.md", b"theirs")  # newer than our edit
    flaky.plug()
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert disk.cat_file("/doc.md") == at_path
    names = [n for n in disk.ls("/", detail=False) if "conflicted copy" in n]
    assert len(names) == copies
    if copies:
        assert disk.cat_file(names[0]) == b"ours"
        assert fs.status(names[0])["file"]["state"] == "conflict"
    assert fs.cat_file("/doc.md") == at_path
    assert len(fs.conflicts()) == 1
    fs.close()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(InvalidArgument):
        flaky_stack(tmp_path, conflict_policy="mine")
    with pytest.raises(InvalidArgument):
        flaky_stack(tmp_path, max_cache_bytes="lots")


def test_status_states_and_queue_totals(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0)
    disk.pipe_file("/s/remote.txt", b"r")
    fs.ls("/s")
    flaky.unplug()
    assert not fs.probe()
    fs.pipe_file("/s/new.txt", b"12345")
    status = fs.status("/s")
    states = {f["path"]: f["state"] for f in status["files"]}
    assert states == {"/s/remote.txt": "not cached", "/s/new.txt": "dirty"}
    assert status["queue"]["count"] == 1 and status["queue"]["bytes"] == 5
    assert status["queue"]["oldest"] <= time.time()
    assert status["online"] is False
    flaky.plug()
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert fs.status("/s/new.txt")["file"]["state"] == "cached"
    fs.close()


def test_queued_operations_survive_a_restart(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0)
    flaky.unplug()
    fs.pipe_file("/keep/a", b"a")
    fs.mv("/keep/a", "/keep/b")
    fs.makedirs("/keep/empty")
    fs.close()
    again, flaky2, disk2 = flaky_stack(tmp_path, failure_rate=0.0)
    assert again.cat_file("/keep/b") == b"a"
    again.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert disk2.cat_file("/keep/b") == b"a" and not disk2.exists("/keep/a")
    assert disk2.isdir("/keep/empty")
    again.close()


def _second_process(remote: str, cache: str, path: str) -> None:
    fs = Offline(fs=LocalBackend(remote, fsync=False), cache_dir=cache, fsync=False)
    fs.pipe_file(path, b"from the other process")
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    fs.close()


def test_two_processes_share_a_cache_dir_with_one_syncer(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0)
    fs.pipe_file("/one", b"1")
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert fs.status()["syncer"]["holds_lock"]
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_second_process,
                            args=(str(tmp_path / "remote"), str(tmp_path / "cache"), "/two"))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert disk.cat_file("/two") == b"from the other process"
    fs.invalidate_cache()
    assert fs.cat_file("/two") == b"from the other process"
    fs.close()


def test_internal_data_of_layers_above_is_synced(tmp_path):
    from aiofs.layer import internal_access

    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0)
    with internal_access():
        fs.pipe_file("/.aiofs/state.json", b"{}")
    assert fs.ls("/", detail=False) == []
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    with internal_access():
        assert disk.cat_file("/.aiofs/state.json") == b"{}"
    fs.close()


def test_cli_sync_and_status(tmp_path):
    import json

    from click.testing import CliRunner

    from aiofs.cli import cli

    config = tmp_path / "config.toml"
    config.write_text(
        "[stacks.off]\n"
        f'layers = [{{ type = "offline", cache_dir = "{tmp_path / "cache"}", syncer = false }}]\n'
        f'backend = {{ type = "local", root = "{tmp_path / "remote"}" }}\n')
    fs = Offline(fs=LocalBackend(str(tmp_path / "remote")), cache_dir=str(tmp_path / "cache"),
                 syncer=False)
    fs.pipe_file("/queued.txt", b"waiting")
    fs.close()

    def run(*args):
        result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    status = json.loads(run("status", "off", "/queued.txt", "--json"))
    assert status["queue"]["count"] == 1 and status["file"]["state"] == "dirty"
    assert "stack off (online)" in run("sync", "off")  # a drain was started
    assert "everything is uploaded" in run("sync", "off", "--wait")
    assert (tmp_path / "remote" / "queued.txt").read_bytes() == b"waiting"
    listing = run("status", "off:/")
    assert "cached" in listing and "/queued.txt" in listing


def test_pickles_and_rebuilds_from_its_arguments(tmp_path):
    import pickle

    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    fs.pipe_file("/p.txt", b"pickled")
    clone = pickle.loads(pickle.dumps(fs))
    assert clone is not fs and clone.cache_dir == fs.cache_dir
    assert clone.cat_file("/p.txt") == b"pickled"  # the same journal and store
    assert repr(clone) == "Offline(FaultInjectingFileSystem(Local('%s')))" % (tmp_path / "remote")
    clone.close()
    fs.close()


def test_text_writes_are_all_or_nothing(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0)
    with pytest.raises(RuntimeError):
        with fs.open("/t.txt", "w") as f:
            f.write("half")
            raise RuntimeError("the writer fails half way")
    assert not fs.exists("/t.txt") and fs.queue_totals()["count"] == 0
    with fs.open("/t.txt", "w") as f:
        f.write("whole")
    assert fs.cat_file("/t.txt") == b"whole"
    fs.close()


def test_pinned_folders_stay_available_offline(tmp_path):
    # no background syncer: its idle maintenance also refreshes pins, and when it ran between
    # the remote write and refresh_pins() it fetched new.txt first (a CI failure)
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, revalidate_after=0.0,
                                  syncer=False)
    disk.pipe({"/keep/a.txt": b"a", "/keep/sub/b.txt": b"b", "/other.txt": b"o"})
    assert fs.pin("/keep") == 2
    disk.pipe_file("/keep/new.txt", b"new")  # appears on the remote later
    assert fs.refresh_pins() == 1
    flaky.unplug()
    assert not fs.probe()
    assert fs.pins() == ["/keep"]
    assert {p: fs.cat_file(p) for p in fs.find("/keep")} == {
        "/keep/a.txt": b"a", "/keep/sub/b.txt": b"b", "/keep/new.txt": b"new"}
    with pytest.raises(SyncFailed):
        fs.cat_file("/other.txt")
    fs.unpin("/keep")
    assert fs.pins() == []
    fs.close()


def test_the_syncer_fetches_what_pinned_folders_gained_when_idle(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, revalidate_after=0.0,
                                  syncer=False)
    disk.pipe({"/keep/a.txt": b"a"})
    fs.pin("/keep")
    fs.close()
    disk.pipe_file("/keep/new.txt", b"new")
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, revalidate_after=0.0)
    deadline = time.monotonic() + 10
    while fs.status("/keep/new.txt")["file"]["state"] != "cached":
        assert time.monotonic() < deadline, "the syncer did not refresh the pinned folder"
        fs._syncer.wait_progress(0.5)  # wakes when the syncer ends a step
    flaky.unplug()
    assert not fs.probe()
    assert fs.cat_file("/keep/new.txt") == b"new"
    fs.close()


def test_bulk_reads_of_uncached_files_are_one_bulk_call(tmp_path):
    disk = LocalBackend(str(tmp_path / "remote"), fsync=False)
    counting = CountingFileSystem(fs=disk)
    fs = Offline(fs=counting, cache_dir=str(tmp_path / "cache"), fsync=False)
    files = {f"/bulk/{i}.txt": b"%d" % i * (i + 1) for i in range(8)}
    disk.pipe(files)
    fs.ls("/bulk")
    counting.reset()
    assert fs.cat(sorted(files)) == files
    assert counting.calls["cat"] == 1 and counting.calls["cat_file"] == 0
    assert {f["state"] for f in fs.status("/bulk")["files"]} == {"cached"}
    counting.reset()
    assert fs.cat(sorted(files)) == files  # now from the cache
    assert sum(counting.calls.values()) == 0
    fs.close()


# -- moves of files whose data is not cached ----------------------------------------------------


def test_moved_uncached_files_stay_readable_before_the_move_lands(tmp_path):
    """Regression: a clean file whose data was not in the cache (never read, evicted, or
    replaced by a listing after an upload whose stamp was lost on a flaky link) was moved
    as metadata only. A moved file became dirty without data ("local data ... is missing
    from the cache"), a file moved with its directory asked the remote for its new name
    (NotFound) until the move reached the remote. A move now carries the data."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    disk.pipe_file("/a/f", b"f" * 100)
    disk.pipe_file("/t/x", b"x" * 50)
    disk.pipe_file("/t/s/y", b"y" * 70)
    assert fs.find("/") == ["/a/f", "/t/s/y", "/t/x"]
    fs.cat_file("/a/f")
    fs.evict(max_bytes=0)  # clean data goes
    assert fs.status("/a/f")["file"]["state"] == "not cached"
    fs.mv("/a/f", "/a/g")
    fs.mv("/t", "/u", recursive=True)
    # the syncer has not run: the remote still has the old names
    assert disk.exists("/a/f") and not disk.exists("/a/g") and not disk.exists("/u")
    assert fs.cat_file("/a/g") == b"f" * 100
    assert fs.cat_file("/u/x") == b"x" * 50
    assert fs.cat_file("/u/s/y") == b"y" * 70
    fs.evict(max_bytes=0)  # moved, not yet uploaded: the data stays
    assert fs.cat_file("/a/g") == b"f" * 100 and fs.cat_file("/u/s/y") == b"y" * 70
    fs.sync(wait=True, timeout=30)
    assert remote_files(disk) == {"a/g": b"f" * 100, "u/x": b"x" * 50, "u/s/y": b"y" * 70}
    fs.close()


def test_moved_uncached_files_offline_fail_cleanly_then_read_after_the_drain(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    disk.pipe_file("/a/f", b"f" * 100)
    disk.pipe_file("/t/x", b"x" * 50)
    assert fs.find("/") == ["/a/f", "/t/x"]
    flaky.unplug()
    assert not fs.probe()
    fs.mv("/a/f", "/a/g")
    fs.mv("/t", "/u", recursive=True)
    for path in ("/a/g", "/u/x"):  # never the remote's answer for a name it does not have yet
        with pytest.raises(SyncFailed):
            fs.cat_file(path)
    flaky.plug()
    fs.sync(wait=True, timeout=30)
    assert fs.cat_file("/a/g") == b"f" * 100
    assert fs.cat_file("/u/x") == b"x" * 50
    fs.close()


def test_a_moved_directory_takes_along_subdirectories_never_listed(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    disk.pipe_file("/t/x", b"x" * 5)
    disk.pipe_file("/t/s/y", b"y" * 7)
    disk.pipe_file("/t/s/z/w", b"w" * 9)
    assert fs.ls("/t", detail=False) == ["/t/s", "/t/x"]  # /t/s itself never listed
    fs.mv("/t", "/u", recursive=True)
    assert not disk.exists("/u")
    assert fs.find("/u") == ["/u/s/y", "/u/s/z/w", "/u/x"]
    assert fs.cat_file("/u/s/z/w") == b"w" * 9
    fs.sync(wait=True, timeout=30)
    assert remote_files(disk) == {"u/x": b"x" * 5, "u/s/y": b"y" * 7, "u/s/z/w": b"w" * 9}
    fs.close()


# -- directories made here, and stamps after moves (flaky-network model regressions) ----------


def test_an_explicit_makedirs_survives_its_write_being_moved_away(tmp_path):
    """Regression: a directory made here only as the parent of a queued write, then made
    explicitly (makedirs, exist_ok) was never queued itself; moving the write away before
    it was uploaded left the remote without the directory, and the next revalidation
    dropped it from the local view too ("missing directories")."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    fs.pipe_file("/r/d0/d1/f0", b"data")
    fs.makedirs("/r/d0/d1", exist_ok=True)
    fs.mv("/r/d0/d1/f0", "/r/d1/f2")
    fs.sync(wait=True, timeout=30)
    assert disk.isdir("/r/d0/d1") and disk.ls("/r/d0/d1") == []
    assert remote_files(disk, "/r") == {"d1/f2": b"data"}
    fs.invalidate_cache()
    assert fs.find("/r", withdirs=True) == ["/r", "/r/d0", "/r/d0/d1", "/r/d1", "/r/d1/f2"]
    fs.close()


def test_a_directory_only_implied_by_a_write_moved_away_may_vanish(tmp_path):
    """The other side of the rule above: without an explicit makedirs nothing is queued
    for a parent directory (the upload makes it), so nothing is uploaded for nothing."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    fs.pipe_file("/r/d0/f0", b"data")
    fs.mv("/r/d0/f0", "/r/f1")
    assert fs.queue_totals()["count"] == 1  # one upload, at the new name
    fs.sync(wait=True, timeout=30)
    assert not disk.exists("/r/d0")
    fs.close()


def test_an_edit_after_a_tree_move_is_not_a_conflict(tmp_path):
    """Regression: a file uploaded, then moved with its directory before the upload's stamp
    was recorded, lost its stamp; the next edit was based on "absent" and became a
    conflicted copy of itself ("find() diverged"). The tree move now reads the moved
    files' stamps, and an unknown stamp means "no check", never "absent"."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    fs.pipe_file("/r/d1/f2", b"first")
    fs.mv("/r/d1", "/r/d0/d1", recursive=True)  # queued behind the upload of /r/d1/f2
    fs.sync(wait=True, timeout=30)
    assert fs._row(fs._journal.db(), "/r/d0/d1/f2")["stamp"]  # read after the move
    fs.pipe_file("/r/d0/d1/f2", b"second")
    fs.sync(wait=True, timeout=30)
    assert fs.conflicts() == []
    assert remote_files(disk, "/r") == {"d0/d1/f2": b"second"}
    # and with the stamp unknown (a lost answer): still no conflict with ourselves
    with fs._journal.tx() as conn:
        conn.execute("UPDATE entries SET stamp = NULL WHERE path = '/r/d0/d1/f2'")
    fs.pipe_file("/r/d0/d1/f2", b"third")
    fs.sync(wait=True, timeout=30)
    assert fs.conflicts() == []
    assert remote_files(disk, "/r") == {"d0/d1/f2": b"third"}
    fs.close()


def test_offline_lookup_of_an_unknown_path_when_the_remote_is_back(tmp_path):
    """Regression: offline, a lookup of a path never seen tried the remote once and let its
    "not found" escape, so makedirs of a new directory raised NOT_FOUND instead of making
    it (the remote was back before the probe noticed)."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    fs.set_online(False)
    fs.makedirs("/r/d0", exist_ok=True)
    assert fs.online and fs.isdir("/r/d0")
    fs.sync(wait=True, timeout=30)
    assert disk.isdir("/r/d0")
    fs.close()


def test_a_failed_bulk_upload_leaves_no_operation_claimed(tmp_path):
    """Regression: when a bulk upload failed and the one-by-one retry hit a connection
    error, the operations after it stayed 'uploading'; the head of the queue could never be
    claimed again and ``sync(wait=True)`` waited forever."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    for i in range(3):
        fs.pipe_file(f"/r/f{i}", b"x" * i)
    flaky.operations, flaky.failure_rate = frozenset({"put_file"}), 1.0
    fs._syncer._step(fs)  # one bulk upload, and its one-by-one retry, both fail
    states = [r["state"] for r in fs._journal.db().execute("SELECT state FROM ops")]
    assert states == ["queued"] * 3
    flaky.failure_rate = 0.0
    fs.sync(wait=True, timeout=30)
    assert remote_files(disk, "/r") == {f"f{i}": b"x" * i for i in range(3)}
    fs.close()


def test_a_listing_taken_before_a_tree_move_landed_is_not_merged_after(tmp_path):
    """Regression: a listing of a directory below a moved tree, asked of the remote while
    the move was still queued (the remote had nothing there yet) and merged once it had
    landed, dropped the directory and its files from the local view; the next write there
    was based on "absent" and became a conflicted copy of itself."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    disk.pipe_file("/r/d1/s/f2", b"theirs")
    assert fs.find("/r") == ["/r/d1/s/f2"]
    fs.mv("/r/d1", "/r/d0/d1", recursive=True)
    with fs._journal.tx() as conn:  # the subdirectory's listing is incomplete (a flaky list)
        conn.execute("DELETE FROM dirs WHERE path = '/r/d0/d1/s'")
    real_ls = flaky.ls

    def ls_then_the_move_lands(path, detail=True, **kwargs):
        try:
            return real_ls(path, detail=detail, **kwargs)
        finally:
            if path == "/r/d0/d1/s":
                del flaky.ls
                fs.sync(wait=True, timeout=SYNC_TIMEOUT)

    flaky.ls = ls_then_the_move_lands
    with pytest.raises(FileNotFoundError):
        real_ls("/r/d0/d1/s")  # the remote has nothing there yet
    assert fs.ls("/r/d0/d1/s", detail=False) == ["/r/d0/d1/s/f2"]
    assert fs.find("/r") == ["/r/d0/d1/s/f2"]
    fs.pipe_file("/r/d0/d1/s/f2", b"ours")
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert fs.conflicts() == []
    assert remote_files(disk, "/r") == {"d0/d1/s/f2": b"ours"}
    fs.close()


@pytest.mark.parametrize("policy, theirs_at_dst", [("keep-both", True), ("remote-wins", True),
                                                   ("local-wins", False)])
def test_a_move_onto_a_file_someone_else_created_keeps_both(tmp_path, policy, theirs_at_dst):
    """A queued rename whose destination got a file on the remote meanwhile never replaces
    it silently: theirs stays, ours lands as a conflicted copy next to it (an overwriting
    policy moves over it, as asked)."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False,
                                  conflict_policy=policy)
    disk.pipe_file("/r/a.txt", b"ours")
    assert fs.find("/r") == ["/r/a.txt"]
    fs.mv("/r/a.txt", "/r/b.txt")
    disk.pipe_file("/r/b.txt", b"theirs")  # someone else, before our move reached the remote
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    remote = remote_files(disk, "/r")
    if theirs_at_dst:
        [copy] = [name for name in remote if "conflicted copy" in name]
        assert remote == {"b.txt": b"theirs", copy: b"ours"}
        assert [c["outcome"] for c in fs.conflicts()] == ["kept-both"]
        fs.invalidate_cache()
        assert fs.cat_file("/r/b.txt") == b"theirs" and fs.cat_file(f"/r/{copy}") == b"ours"
        assert sorted(fs.ls("/r", detail=False)) == sorted(["/r/b.txt", f"/r/{copy}"])
    else:
        assert remote == {"b.txt": b"ours"} and fs.conflicts() == []
    fs.close()


def test_an_upload_whose_answer_was_lost_is_not_coalesced_away(tmp_path):
    """Regression: an upload that landed but whose completion was lost (the listing after a
    bulk put failed) went back to the queue; a new write of the same file replaced it and
    kept its base ("absent"), so the new write found our own upload on the remote and became
    a conflicted copy of itself. An attempted upload is never coalesced away now."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    fs.pipe({"/r/a": b"first", "/r/b": b"other"})  # one bulk upload of two files
    real_put = flaky.put

    def put_then_lose_the_listing(*args, **kwargs):
        real_put(*args, **kwargs)
        flaky.operations, flaky.failure_rate = frozenset({"ls"}), 1.0

    flaky.put = put_then_lose_the_listing
    fs._syncer._step(fs)  # both land; the listing after them fails
    del flaky.put
    assert remote_files(disk, "/r") == {"a": b"first", "b": b"other"}
    assert fs.queue_totals()["count"] == 2
    flaky.failure_rate = 0.0
    fs.pipe_file("/r/a", b"second")
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert fs.conflicts() == []
    assert remote_files(disk, "/r") == {"a": b"second", "b": b"other"}
    fs.close()


def lose_the_answer_of_the_next_mv(flaky) -> None:
    """The next ``mv`` on the remote lands, but its caller gets a connection error."""
    real_mv = flaky.mv

    def mv_then_lose_the_answer(*args, **kwargs):
        del flaky.mv
        real_mv(*args, **kwargs)
        raise ConnectionError("answer lost")

    flaky.mv = mv_then_lose_the_answer


def test_a_conflicting_move_whose_answer_was_lost_never_lands_over_theirs(tmp_path):
    """The move of ours to the conflicted copy lands, but its answer is lost: the retry finds
    the source gone and uploads our data under a copy name, never over their file."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    disk.pipe_file("/r/a.txt", b"ours")
    assert fs.find("/r") == ["/r/a.txt"]
    fs.mv("/r/a.txt", "/r/b.txt")
    disk.pipe_file("/r/b.txt", b"theirs")
    lose_the_answer_of_the_next_mv(flaky)
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    remote = remote_files(disk, "/r")
    assert remote.pop("b.txt") == b"theirs"
    assert remote and all("conflicted copy" in name and data == b"ours"
                          for name, data in remote.items())
    fs.close()


def test_a_move_whose_answer_was_lost_is_not_a_conflict_with_itself(tmp_path):
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    disk.pipe_file("/r/a.txt", b"ours")
    assert fs.find("/r") == ["/r/a.txt"]
    fs.mv("/r/a.txt", "/r/b.txt")
    lose_the_answer_of_the_next_mv(flaky)
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert remote_files(disk, "/r") == {"b.txt": b"ours"} and fs.conflicts() == []
    fs.close()


def test_an_answer_to_a_call_made_before_going_offline_does_not_switch_back(tmp_path):
    """Regression: a call in flight when the cable was pulled (a heartbeat probe) returned
    after a newer call had failed and switched the layer offline; its late answer switched
    it back online, so a 1,000-operation offline session ended "online"."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    in_flight, release = threading.Event(), threading.Event()
    plain_info = flaky.info

    def info_answered_late(path, **kwargs):
        result = plain_info(path, **kwargs)  # the remote answers before the cable is pulled
        if not in_flight.is_set():
            in_flight.set()
            release.wait(30)  # ... but the answer arrives after the layer went offline
        return result

    flaky.info = info_answered_late
    outcome = []
    late = threading.Thread(target=lambda: outcome.append(fs.probe(attempts=1)))
    late.start()
    assert in_flight.wait(30)
    flaky.unplug()
    assert not fs.probe(attempts=1) and not fs.online
    release.set()
    late.join(30)
    assert outcome == [False] and not fs.online
    flaky.plug()
    assert fs.probe(attempts=1) and fs.online  # an answer asked after the switch counts
    fs.close()


def test_an_upload_does_not_set_the_base_of_a_write_after_a_tree_op_above_it(tmp_path):
    """Regression: a file was uploaded, its directory deleted, another directory moved to
    where it was, and the moved file written; the first upload's completion handed its
    stamp to that write as base, though the delete and the move came between: once they
    landed the remote held the moved file, so the write became a conflicted copy of itself."""
    fs, flaky, disk = flaky_stack(tmp_path, failure_rate=0.0, syncer=False)
    fs.pipe_file("/r/d1/d0/f1", b"replaced by the move")
    fs.pipe_file("/r/d0/f1", b"moved")
    fs.rm("/r/d1", recursive=True)
    fs.mv("/r/d0", "/r/d1/d0", recursive=True)
    with fs.open("/r/d1/d0/f1", "wb") as f:
        f.write(b"ours")
    fs.sync(wait=True, timeout=SYNC_TIMEOUT)
    assert remote_files(disk, "/r") == {"d1/d0/f1": b"ours"}  # no conflicted copy
    fs.close()
