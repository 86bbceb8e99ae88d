"""Dedup: shipped suites over memory, local and Compress(Local); dedup of repeated content,
listings without manifest reads, chunk-local range reads, corruption detection, index
rebuild, two writers on one store, gc and check, bad options."""

from __future__ import annotations

import itertools
import os
import pickle
import random

import fsspec
import pytest

from aiofs import LocalBackend
from aiofs.errors import Conflict, IntegrityError, InvalidArgument
from aiofs.layer import internal_access
from aiofs.layers import Compress, Dedup
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.counting import CountingFileSystem
from aiofs.testing.stateful import run_stateful
from conftest import drop_memory_root, new_memory_root

SMALL = {"min_size": "1KiB", "avg_size": "4KiB", "max_size": "16KiB", "pack_size": "256KiB",
         "batch_size": "64KiB"}  # small chunks and packs: multi-chunk, multi-pack cases stay cheap


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def over_local(tmp_path, compress: bool = False, **options):
    for key, value in SMALL.items():
        options.setdefault(key, value)
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    target = LocalBackend(str(tmp_path / "store"), fsync=False)
    if compress:
        target = Compress(fs=target, frame_size=4096, cache_dir=str(tmp_path / "ccache"))
    return Dedup(fs=target, **options)


def over_memory(tmp_path, **options):
    for key, value in SMALL.items():
        options.setdefault(key, value)
    return Dedup(fs=fsspec.filesystem("memory"), index_cache=False, **options)


def pack_files(tmp_path) -> list:
    packs = tmp_path / "store" / ".aiofs" / "dedup" / "packs"
    return sorted(packs.iterdir()) if packs.exists() else []


def stored_bytes(tmp_path) -> int:
    return sum(p.stat().st_size for p in pack_files(tmp_path))


# -- the shipped suites ------------------------------------------------------------------------


class MemoryCleanup:
    def cleanup_fs(self, fs, root):
        drop_memory_root(root)


class TestDedupOverLocalAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return over_local(tmp_path), "/data"


class DedupConformance(ConformanceSuite):
    own_internal_prefixes = (".aiofs/dedup/",)


class TestDedupOverLocalConformance(DedupConformance):
    def make_fs(self, tmp_path):
        return over_local(tmp_path), ""


class TestDedupOverCompressAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return over_local(tmp_path, compress=True), "/data"


class TestDedupOverCompressConformance(DedupConformance):
    def make_fs(self, tmp_path):
        return over_local(tmp_path, compress=True), ""


class TestDedupOverMemoryAbstract(MemoryCleanup, FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return over_memory(tmp_path), new_memory_root()


class TestDedupOverMemoryConformance(MemoryCleanup, DedupConformance):
    def make_fs(self, tmp_path):
        return over_memory(tmp_path), new_memory_root()


def test_dedup_over_compress_stateful_model(tmp_path):
    fs = over_local(tmp_path, compress=True)
    counter = itertools.count()
    assert run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=500) >= 500


def test_dedup_over_memory_stateful_model(tmp_path):
    fs = over_memory(tmp_path)
    roots = []

    def factory():
        roots.append(new_memory_root())
        return fs, roots[-1]

    try:
        assert run_stateful(factory, max_examples=500) >= 500
    finally:
        for root in roots:
            drop_memory_root(root)


# -- deduplication -----------------------------------------------------------------------------


def test_identical_content_is_stored_once(tmp_path):
    fs = over_local(tmp_path)
    data = rand(300_000)
    fs.pipe_file("/a.bin", data)
    after_one = stored_bytes(tmp_path)
    assert 300_000 <= after_one < 310_000
    fs.pipe_file("/b.bin", data)                       # a duplicate upload costs nothing
    with fs.open("/c.bin", "wb") as f:                 # nor does a streamed one
        for i in range(0, len(data), 7777):
            f.write(data[i : i + 7777])
    fs.pipe({"/d.bin": data, "/e.bin": data})          # nor a bulk one
    assert stored_bytes(tmp_path) == after_one
    assert {fs.cat_file(p) for p in ("/a.bin", "/b.bin", "/c.bin", "/d.bin", "/e.bin")} == {data}
    assert len({fs.info(p)["blake3"] for p in ("/a.bin", "/c.bin", "/e.bin")}) == 1


def test_an_edit_stores_only_the_changed_chunks(tmp_path):
    fs = over_local(tmp_path)
    data = bytearray(rand(1_000_000))
    fs.pipe_file("/v1", bytes(data))
    before = stored_bytes(tmp_path)
    data[500_000:500_100] = b"x" * 100
    fs.pipe_file("/v2", bytes(data))
    growth = stored_bytes(tmp_path) - before
    assert 0 < growth < 3 * 16 * 1024 + 2000          # a few chunks, not the file
    assert fs.cat_file("/v2") == bytes(data)


def test_mv_and_cp_move_manifests_not_data(tmp_path):
    fs = over_local(tmp_path)
    fs.pipe_file("/a.bin", rand(200_000))
    before = pack_files(tmp_path)
    fs.cp_file("/a.bin", "/b.bin")
    fs.mv("/a.bin", "/dir/c.bin")
    assert pack_files(tmp_path) == before
    assert fs.cat_file("/b.bin") == fs.cat_file("/dir/c.bin") == rand(200_000)
    assert (tmp_path / "store" / "b.bin").stat().st_size < 5_000  # a manifest of ~40 chunks


def test_bulk_writes_make_few_objects(tmp_path):
    fs = over_local(tmp_path)
    counting = CountingFileSystem(fs=fs.fs)
    fs = Dedup(fs=counting, cache_dir=str(tmp_path / "cache2"), **SMALL)
    files = {f"/f{i}.bin": rand(20_000, i) for i in range(50)}
    fs.pipe(files)
    assert counting.calls["pipe"] == 2 and counting.calls["pipe_file"] <= 3  # packs, manifests
    assert len(pack_files(tmp_path)) <= 1_000_000 // (256 * 1024) + 1
    assert fs.cat(sorted(files)) == files


def test_small_files_are_inline_and_empty_files_work(tmp_path):
    fs = over_local(tmp_path)
    fs.pipe_file("/tiny", b"hello")
    fs.touch("/empty")
    assert pack_files(tmp_path) == []
    assert fs.cat_file("/tiny") == b"hello" and fs.cat_file("/empty") == b""
    assert fs.info("/tiny")["size"] == 5 and fs.info("/empty")["size"] == 0


# -- listings and range reads ------------------------------------------------------------------


def test_listings_read_no_manifest_once_cached(tmp_path):
    counting = CountingFileSystem(fs=LocalBackend(str(tmp_path / "store"), fsync=False))
    writer = Dedup(fs=counting, cache_dir=str(tmp_path / "cache"), **SMALL)
    writer.pipe({f"/d/f{i}": rand(5000 + i, i) for i in range(40)})
    fresh = Dedup(fs=counting, cache_dir=str(tmp_path / "cache"), **SMALL)  # same cache file
    counting.reset()
    listing = fresh.ls("/d", detail=True)
    assert sorted(e["size"] for e in listing) == list(range(5000, 5040))
    assert fresh.find("/", detail=True)["/d/f7"]["size"] == 5007
    assert counting.calls["cat"] == counting.calls["cat_file"] == 0
    # a cold cache: the misses are read with one bulk call, then cached
    cold = Dedup(fs=counting, cache_dir=str(tmp_path / "cold"), **SMALL)
    counting.reset()
    assert len(cold.ls("/d", detail=True)) == 40
    assert counting.calls["cat"] == 1 and counting.calls["cat_file"] == 0
    counting.reset()
    cold.ls("/d", detail=True)
    assert counting.calls["cat"] == 0


def test_range_reads_fetch_only_covering_chunks(tmp_path):
    counting = CountingFileSystem(fs=LocalBackend(str(tmp_path / "store"), fsync=False))
    fs = Dedup(fs=counting, cache_dir=str(tmp_path / "cache"), **SMALL)
    data = rand(2_000_000)
    fs.pipe_file("/big", data)
    manifest_size = (tmp_path / "store" / "big").stat().st_size
    counting.reset()
    assert fs.cat_file("/big", 1_000_000, 1_000_100) == data[1_000_000:1_000_100]
    assert counting.bytes_read - manifest_size <= 2 * 16 * 1024  # at most two chunks
    counting.reset()
    with fs.open("/big", "rb", block_size=8192) as f:
        f.seek(1_500_000)
        assert f.read(10) == data[1_500_000:1_500_010]
    assert counting.bytes_read < 64 * 1024 + 100_000


# -- corruption --------------------------------------------------------------------------------


def test_a_flipped_byte_in_a_pack_is_an_integrity_error(tmp_path):
    fs = over_local(tmp_path)
    data = rand(100_000)
    fs.pipe_file("/a.bin", data)
    (pack,) = pack_files(tmp_path)
    blob = bytearray(pack.read_bytes())
    blob[50_000] ^= 0x01
    pack.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError) as info:
        fs.cat_file("/a.bin")
    assert "/a.bin" in str(info.value)
    assert fs.cat_file("/a.bin", 0, 1000) == data[:1000]  # chunks before the damage still read
    report = fs.check(read_data=True)
    assert not report["ok"] and any("verification" in p["detail"] for p in report["problems"])
    assert fs.check()["ok"]  # without --read-data only structure is checked


def test_a_corrupt_manifest_is_an_integrity_error(tmp_path):
    fs = over_local(tmp_path)
    fs.pipe_file("/a.bin", rand(100_000))
    manifest = tmp_path / "store" / "a.bin"
    manifest.write_bytes(manifest.read_bytes().replace(b'"size":100000', b'"size":100001'))
    fs.invalidate_cache()
    with pytest.raises(IntegrityError):
        fs.cat_file("/a.bin")
    assert "integrity_error" in fs.info("/a.bin")
    report = fs.check()
    assert [p["path"] for p in report["problems"]] == ["/a.bin"]
    with pytest.raises(IntegrityError):  # gc never sweeps when it cannot read a manifest
        fs.gc(safety_window=0)


def test_missing_chunks_are_reported_by_check(tmp_path):
    fs = over_local(tmp_path)
    fs.pipe_file("/a.bin", rand(100_000))
    for pack in pack_files(tmp_path):
        pack.unlink()
    with pytest.raises(IntegrityError):
        fs.cat_file("/a.bin")
    report = fs.check()
    assert not report["ok"]
    assert any("missing" in p["detail"] for p in report["problems"])


# -- the index cache and several writers -------------------------------------------------------


def test_index_cache_is_rebuilt_when_deleted(tmp_path):
    fs = over_local(tmp_path)
    data = rand(300_000)
    fs.pipe_file("/a.bin", data)
    for name in os.listdir(tmp_path / "cache"):
        os.unlink(tmp_path / "cache" / name)
    fresh = over_local(tmp_path)
    assert fresh.cat_file("/a.bin") == data
    before = stored_bytes(tmp_path)
    fresh.pipe_file("/b.bin", data)  # the rebuilt index still deduplicates
    assert stored_bytes(tmp_path) == before


def test_two_writers_share_one_store(tmp_path):
    one = over_local(tmp_path, cache_dir=str(tmp_path / "c1"))
    two = over_local(tmp_path, cache_dir=str(tmp_path / "c2"))
    one.pipe_file("/from-one", rand(200_000, 1))
    two.pipe_file("/from-two", rand(200_000, 2))
    assert one.cat_file("/from-two") == rand(200_000, 2)   # a chunk miss refreshes the index
    assert two.cat_file("/from-one") == rand(200_000, 1)
    index = tmp_path / "store" / ".aiofs" / "dedup" / "index"
    writers = {name.split("-")[0] for name in os.listdir(index)}
    assert len(writers) == 2  # index files are named per writer: nobody overwrites another


def test_pickle_round_trip(tmp_path):
    fs = over_local(tmp_path)
    fs.pipe_file("/a", rand(50_000))
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.cat_file("/a") == rand(50_000)
    assert clone.min_size == fs.min_size and clone.pack_size == fs.pack_size


# -- gc --------------------------------------------------------------------------------------


def test_gc_deletes_garbage_and_repacks(tmp_path):
    fs = over_local(tmp_path, pack_size="2MiB")
    keep, drop = rand(600_000, 1), rand(600_000, 2)
    fs.pipe({"/keep": keep, "/drop": drop})   # one bulk pack holding both
    fs.pipe_file("/gone", rand(300_000, 3))   # a pack of its own
    fs.rm(["/drop", "/gone"])
    assert fs.gc()["packs_deleted"] == 0       # inside the safety window: nothing is touched
    report = fs.gc(safety_window=0)
    assert report["packs_deleted"] == 1 and report["packs_repacked"] == 1
    assert stored_bytes(tmp_path) < 700_000
    assert fs.cat_file("/keep") == keep
    assert fs.check(read_data=True)["ok"]
    index = tmp_path / "store" / ".aiofs" / "dedup" / "index"
    assert len(os.listdir(index)) == 1         # one consolidated index file
    assert over_local(tmp_path, cache_dir=str(tmp_path / "other")).cat_file("/keep") == keep


def test_gc_refuses_while_another_writer_holds_the_store(tmp_path):
    fs = over_local(tmp_path)
    other = over_local(tmp_path, cache_dir=str(tmp_path / "c2"))
    other.pipe_file("/x", rand(100_000))
    fs.pipe_file("/y", rand(100_000, 1))
    with pytest.raises(Conflict):
        fs.gc(safety_window=0)
    other.close()                              # the other writer is done: gc may run
    fs.gc(safety_window=0)
    assert fs.cat_file("/x") == rand(100_000)


def test_gc_keeps_versions_other_layers_store_under_aiofs(tmp_path):
    fs = over_local(tmp_path)
    fs.pipe_file("/a", rand(200_000))
    with internal_access():
        fs.cp_file("/a", "/.aiofs/versions/a/1")
    fs.rm("/a")
    fs.gc(safety_window=0)
    with internal_access():
        assert fs.cat_file("/.aiofs/versions/a/1") == rand(200_000)


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"min_size": "2MiB"}, {"avg_size": 100}, {"max_size": "64MiB"},
    {"min_size": "64KiB", "avg_size": "16KiB"}, {"pack_size": "64MiB"}, {"inline_limit": "1MiB"},
    {"pack_size": "lots"},
])
def test_bad_options_are_refused(tmp_path, options):
    with pytest.raises(InvalidArgument):
        Dedup(fs=LocalBackend(str(tmp_path / "store")), cache_dir=str(tmp_path / "c"), **options)


def test_gc_merges_small_packs(tmp_path):
    fs = over_local(tmp_path, pack_size="1MiB")
    files = {f"/f{i}": rand(40_000, i) for i in range(6)}
    for path, data in files.items():  # written one by one: one small pack each
        fs.pipe_file(path, data)
    assert len(pack_files(tmp_path)) == 6
    report = fs.gc(safety_window=0)
    assert report["packs_merged"] == 6 and len(pack_files(tmp_path)) == 1
    assert fs.cat(sorted(files)) == files
    assert fs.check(read_data=True)["ok"]


# -- the command line --------------------------------------------------------------------------


def test_cli_check_and_gc_on_the_default_stack(isolated_storage):
    import json

    from click.testing import CliRunner

    from aiofs.cli import cli
    from aiofs.stack import open_stack

    fs = open_stack("default")
    fs.pipe_file("/notes/a.txt", rand(100_000))
    fs.rm_file("/notes/a.txt")  # the default stack keeps it as a version of a deleted file
    runner = CliRunner()
    result = runner.invoke(cli, ["check", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] is True
    result = runner.invoke(cli, ["gc", "--safety-window", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["packs_deleted"] == 0  # the version still needs its chunks
    packs = isolated_storage / ".aiofs" / "dedup" / "packs"
    (kept,) = packs.iterdir()
    # written and deleted below the Versioning layer: nothing refers to its pack any more
    dedup = fs.find_layer(Dedup)
    dedup.pipe_file("/scratch.bin", rand(100_000, seed=5))
    dedup.rm_file("/scratch.bin")
    result = runner.invoke(cli, ["gc", "--safety-window", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["packs_deleted"] == 1
    assert list(packs.iterdir()) == [kept]
    fs.pipe_file("/b.bin", rand(100_000, seed=9))
    (pack,) = [p for p in packs.iterdir() if p != kept]
    pack.write_bytes(pack.read_bytes()[:-10])  # damaged on disk
    result = runner.invoke(cli, ["check", "--read-data"])
    assert result.exit_code == 1 and "[INTEGRITY_ERROR]" in result.output
    result = runner.invoke(cli, ["gc", "--repack-threshold", "2"])
    assert result.exit_code == 1 and "INVALID_ARGUMENT" in result.output


def test_streaming_writes_use_bounded_memory(tmp_path):
    import tracemalloc

    fs = over_local(tmp_path, batch_size="1MiB", pack_size="4MiB", min_size="16KiB",
                    avg_size="48KiB", max_size="256KiB")
    tracemalloc.start()
    try:
        with fs.open("/big.bin", "wb") as f:
            for i in range(48):               # 48 MiB in 1 MiB pieces, none kept by the test
                f.write(rand(1 << 20, i))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20                    # a few batches in flight, never the file
    with fs.open("/big.bin", "rb") as f:
        f.seek(47 << 20)
        assert f.read(1 << 20) == rand(1 << 20, 47)


@pytest.mark.parametrize("seed", range(6))
def test_failed_pack_writes_fail_the_file_and_leave_the_store_consistent(tmp_path, seed):
    """A pack write failing in the writer's thread, or while a full pack closes in the
    background, fails the file's close: nothing names the lost pack, the file is absent."""
    from aiofs.testing.faults import FaultInjectingFileSystem

    faults = FaultInjectingFileSystem(fs=LocalBackend(str(tmp_path / "store"), fsync=False),
                                      failure_rate=0.0, seed=seed, operations=["write"])
    fs = Dedup(fs=faults, cache_dir=str(tmp_path / "cache"), **SMALL)
    fs.pipe_file("/before.bin", rand(50_000, seed=99))  # a healthy store to begin with
    faults.failure_rate = 0.05
    data = rand(2_000_000, seed=seed)  # ~8 packs of 256 KiB: several background closes
    with pytest.raises((ConnectionError, TimeoutError)):
        with fs.open("/big.bin", "wb") as f:
            for start in range(0, len(data), 64 << 10):
                f.write(data[start:start + (64 << 10)])
    faults.failure_rate = 0.0
    assert not fs.exists("/big.bin")
    assert fs.cat_file("/before.bin") == rand(50_000, seed=99)
    report = fs.check(read_data=True)
    assert report["ok"], report["problems"]
    fs.pipe_file("/big.bin", data)  # and the store takes the same file once the target heals
    assert fs.cat_file("/big.bin") == data
