"""Compress: shipped suites, stored format interop (zstd/gzip/pyzstd), tamper and truncation
of every region, O(1) listings, frame-local range reads, failed writes, options."""

from __future__ import annotations

import collections
import gzip
import itertools
import pickle
import random
import os
import shutil
import subprocess

import fsspec
import pytest
import pyzstd

from aiofs import Layer, LocalBackend
from aiofs.codecs import zstd_seekable as fmt
from aiofs.errors import BackendUnavailable, IntegrityError, InvalidArgument
from aiofs.layer import RANGE_READS, internal_access
from aiofs.layers import Compress
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.counting import CountingFileSystem
from aiofs.testing.faults import FaultInjectingFileSystem
from aiofs.testing.stateful import run_stateful
from conftest import drop_memory_root, new_memory_root, snapshot_tree

FRAME = 4096  # small frames: multi-frame cases stay cheap


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"file", b"layer", b"stack", b"frame", b"zstd", b"seek", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def mixed(blocks: int, block: int = FRAME, seed: int = 0) -> bytes:
    """Alternating random and text blocks, random first (what fools a first-MiB probe)."""
    return b"".join(rand(block, seed + i) if i % 2 == 0 else text(block, seed + i)
                    for i in range(blocks))


def over_local(tmp_path, **options):
    options.setdefault("frame_size", FRAME)
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    return Compress(fs=LocalBackend(str(tmp_path / "store"), fsync=False), **options)


def over_memory(tmp_path, **options):
    options.setdefault("frame_size", FRAME)
    return Compress(fs=fsspec.filesystem("memory"), cache_dir=str(tmp_path / "cache"), **options)


Counting = CountingFileSystem


# -- the shipped suites ------------------------------------------------------------------------


class MemoryCleanup:
    def cleanup_fs(self, fs, root):
        drop_memory_root(root)


class TestCompressOverLocalAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return over_local(tmp_path), "/data"


class TestCompressOverLocalConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return over_local(tmp_path), ""


class TestCompressOverMemoryAbstract(MemoryCleanup, FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return over_memory(tmp_path), new_memory_root()


class TestCompressOverMemoryConformance(MemoryCleanup, ConformanceSuite):
    def make_fs(self, tmp_path):
        return over_memory(tmp_path), new_memory_root()


class TestCompressGzipConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return over_local(tmp_path, mode="gzip"), ""


def test_compress_over_local_stateful_model(tmp_path):
    fs = over_local(tmp_path)
    counter = itertools.count()
    assert run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=500) >= 500


def test_compress_over_memory_stateful_model(tmp_path):
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
    assert len(roots) >= 500


# -- stored objects are standard files ---------------------------------------------------------


CONTENTS = {
    "empty": b"",
    "tiny": b"hello",
    "under-threshold": text(1000),
    "text": text(50_000),
    "mixed": mixed(9) + b"tail",
}


# Skipped only outside CI; `scripts/setup.sh dev` installs zstd, so in CI it must run.
@pytest.mark.skipif(not os.environ.get("CI") and shutil.which("zstd") is None,
                    reason="zstd command not installed")
@pytest.mark.parametrize("name", sorted(CONTENTS))
def test_zstd_d_and_pyzstd_restore_the_original(tmp_path, name):
    fs = over_local(tmp_path)
    data = CONTENTS[name]
    with fs.open(f"{name}.bin", "wb") as f:
        f.write(data)
    stored = tmp_path / "store" / f"{name}.bin"
    out = subprocess.run(["zstd", "-d", "-c", "-q", str(stored)], capture_output=True, check=True)
    assert out.stdout == data
    with pyzstd.SeekableZstdFile(str(stored), "rb") as f:
        assert f.read() == data
        if len(data) > 100:
            f.seek(len(data) // 3)
            assert f.read(77) == data[len(data) // 3 : len(data) // 3 + 77]
    assert stored.read_bytes()[8:16] == b"AIOFSZST"  # the header frame: magic string first


def test_gzip_mode_is_plain_gzip(tmp_path):
    fs = over_local(tmp_path, mode="gzip")
    data = CONTENTS["mixed"]
    fs.pipe_file("a.bin", data)
    fs.pipe_file("small.txt", b"hi")
    for name, want in (("a.bin", data), ("small.txt", b"hi")):
        raw = (tmp_path / "store" / name).read_bytes()
        assert gzip.decompress(raw) == want
        if shutil.which("gzip"):
            out = subprocess.run(["gzip", "-d", "-c"], input=raw, capture_output=True, check=True)
            assert out.stdout == want
    assert fs.info("a.bin")["size"] == len(data)
    assert fs.cat_file("a.bin", 5000, 9000) == data[5000:9000]
    assert RANGE_READS not in fs.capabilities and RANGE_READS in over_local(tmp_path).capabilities
    # reads detect the format per object: a zstd layer reads gzip objects and vice versa
    assert over_local(tmp_path).cat_file("a.bin") == data
    over_local(tmp_path).pipe_file("z.bin", data)
    assert fs.cat_file("z.bin", 10, 20) == data[10:20]


def test_stored_checksums_match_xxh64():
    data = mixed(4) + text(100)
    blob = fmt.encode_object(data, FRAME)
    table = fmt.parse_object(blob)
    for i in range(table.frames):
        offset, length, size, checksum, digest = table.frame_info(i)
        content = data[table.starts[i] : table.starts[i + 1]]
        assert checksum == fmt.xxh64_low32(content) and size == len(content)
        assert digest == fmt.xxh64(blob[offset : offset + length])


# -- incompressible data, thresholds -----------------------------------------------------------


def frame_kinds(blob) -> list[str]:
    table = fmt.parse_object(blob)
    kinds = []
    for i in range(table.frames):
        offset, length, size, _, _ = table.frame_info(i)
        raw = blob[offset + 4] == 0xA4 and length == size + 9 + 4 + 3 * (-(-size // fmt.MAX_BLOCK))
        kinds.append("raw" if raw else "zstd")
    return kinds


def test_incompressible_frames_are_detected_per_frame(tmp_path):
    fs = over_local(tmp_path)
    data = mixed(8)  # random, text, random, text...: a first-block probe would say "random"
    with fs.open("m.bin", "wb") as f:
        for i in range(0, len(data), 1000):
            f.write(data[i : i + 1000])
    blob = (tmp_path / "store" / "m.bin").read_bytes()
    assert frame_kinds(blob) == ["raw", "zstd"] * 4
    assert len(blob) < len(data) * 0.75
    assert fs.cat_file("m.bin") == data


def test_files_under_the_threshold_are_stored_raw(tmp_path):
    fs = over_local(tmp_path)
    fs.pipe_file("small.txt", text(1000))
    fs.pipe_file("large.txt", text(1024))
    assert frame_kinds((tmp_path / "store" / "small.txt").read_bytes()) == ["raw"]
    assert frame_kinds((tmp_path / "store" / "large.txt").read_bytes()) == ["zstd"]
    fs2 = over_local(tmp_path, compression_threshold=0)
    fs2.pipe_file("tiny.txt", b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    assert frame_kinds((tmp_path / "store" / "tiny.txt").read_bytes()) == ["zstd"]


# -- tampering and truncation: every region of each format --------------------------------------


def zstd_regions(blob: bytes) -> dict[str, tuple[int, int | None]]:
    """Region name -> (offset of a byte in it, data frame it belongs to or None)."""
    table = fmt.parse_object(blob)
    kinds = frame_kinds(blob)
    c, r = kinds.index("zstd"), kinds.index("raw")
    table_at = len(blob) - len(table.table_bytes)
    trailer_at = table_at - fmt.trailer_size(table.frames)

    def frame(i, delta):
        offset, length, _, _, _ = table.frame_info(i)
        return (offset + delta if delta >= 0 else offset + length + delta), i

    return {
        "header magic": (1, None), "header id": (10, None), "header version": (16, None),
        "header frame size": (21, None), "header check": (30, None),
        "compressed frame magic": frame(c, 0), "compressed frame descriptor": frame(c, 4),
        "compressed frame payload": frame(c, table.frame_info(c)[1] // 2),
        "compressed frame checksum": frame(c, -1),
        "raw frame descriptor": frame(r, 4), "raw frame content size": frame(r, 6),
        "raw block header": frame(r, 9), "raw frame payload": frame(r, 2000),
        "raw frame checksum": frame(r, -3),
        "trailer magic": (trailer_at, None), "trailer id": (trailer_at + 9, None),
        "trailer frame count": (trailer_at + 20, None),
        "trailer frame size": (trailer_at + 25, None),
        "trailer logical size": (trailer_at + 28, None),
        "trailer meta hash": (trailer_at + 40, None),
        "trailer frame digest": (trailer_at + 44 + 8 * c + 3, None),
        "trailer check": (table_at - 2, None),
        "seek table magic": (table_at + 3, None), "seek table frame size": (table_at + 4, None),
        "seek table header entry": (table_at + 8, None),
        "seek table compressed size": (table_at + 8 + 12 * (1 + c), None),
        "seek table decompressed size": (table_at + 8 + 12 * (1 + c) + 4, None),
        "seek table checksum": (table_at + 8 + 12 * (1 + r) + 9, None),
        "seek table trailer entry": (len(blob) - 9 - 12, None),
        "footer frame count": (len(blob) - 9, None), "footer descriptor": (len(blob) - 5, None),
        "footer magic": (len(blob) - 1, None),
    }


def gzip_regions(blob: bytes) -> dict[str, int]:
    n = len(blob)
    return {
        "header magic": 0, "header flags": 3, "header mtime": 5, "header os": 9, "header xlen": 10,
        "header extra id": 17, "header version": 23, "header crc": 25,
        "deflate start": 26, "deflate middle": (26 + n - 68) // 2, "deflate last byte": n - 69,
        "crc32": n - 67, "isize": n - 62,
        "trailer member magic": n - 60, "trailer member extra": n - 44,
        "trailer logical size": n - 30, "trailer crc32": n - 22, "trailer digest": n - 16,
        "trailer header crc": n - 11, "trailer empty deflate": n - 10, "trailer zeros": n - 1,
    }


def tamper(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    m = bytearray(data)
    m[offset] ^= mask
    return bytes(m)


def assert_integrity_error(fn, path):
    with pytest.raises(IntegrityError) as info:
        fn()
    assert info.value.code == "INTEGRITY_ERROR"
    assert path in str(info.value)


LARGE = mixed(40)  # stored > 64 KiB: reads go through the header + tail path


@pytest.fixture(scope="module")
def stored_large(tmp_path_factory):
    fs = over_local(tmp_path_factory.mktemp("large"))
    fs.pipe_file("obj.bin", LARGE)
    blob = fs.fs.cat_file("obj.bin")
    assert len(blob) > 64 << 10
    return blob


@pytest.mark.parametrize("region", sorted(zstd_regions(fmt.encode_object(LARGE, FRAME))))
def test_flipped_byte_in_each_zstd_region(tmp_path, stored_large, region):
    fs = over_local(tmp_path)
    fs.pipe_file("obj.bin", LARGE)
    assert fs.cat_file("obj.bin", 100, 200) == LARGE[100:200]  # tables cached before tampering
    offset, frame = zstd_regions(stored_large)[region]
    fs.fs.pipe_file("obj.bin", tamper(stored_large, offset))
    table = fmt.parse_object(stored_large)
    inside = frame if frame is not None else table.frames - 1
    lo = table.starts[inside] + 10
    assert_integrity_error(lambda: fs.cat_file("obj.bin"), "obj.bin")
    assert_integrity_error(lambda: fs.cat_file("obj.bin", lo, lo + 100), "obj.bin")

    def seek_read():
        with fs.open("obj.bin", "rb") as f:
            f.seek(lo)
            return f.read(100)

    assert_integrity_error(seek_read, "obj.bin")
    if frame is not None:  # frames are independent: other frames still read correctly
        other = table.starts[(frame + 2) % table.frames]
        assert fs.cat_file("obj.bin", other, other + 50) == LARGE[other : other + 50]
    else:
        entry = fs.info("obj.bin")
        assert "integrity_error" in entry or entry["size"] == len(LARGE)


@pytest.mark.parametrize("region", sorted(gzip_regions(fmt.gzip_encode(LARGE))))
def test_flipped_byte_in_each_gzip_region(tmp_path, region):
    fs = over_local(tmp_path, mode="gzip")
    fs.pipe_file("obj.gz", LARGE)
    blob = fs.fs.cat_file("obj.gz")
    assert fs.cat_file("obj.gz", 100, 200) == LARGE[100:200]
    fs.fs.pipe_file("obj.gz", tamper(blob, gzip_regions(blob)[region]))
    assert_integrity_error(lambda: fs.cat_file("obj.gz"), "obj.gz")
    assert_integrity_error(lambda: fs.cat_file("obj.gz", 10, 20), "obj.gz")
    assert_integrity_error(lambda: fs.open("obj.gz", "rb").read(10), "obj.gz")


@pytest.mark.parametrize("mode", ["zstd", "gzip"])
def test_every_flipped_byte_and_every_truncation_is_detected(tmp_path, memory_root, mode):
    """Exhaustive on a small object of each format (3 flips per byte, every prefix)."""
    fs = over_memory(tmp_path, frame_size=1024, mode=mode)
    data = text(2500) + rand(1100) + text(700)
    path = f"{memory_root}/obj"
    fs.pipe_file(path, data)
    blob = fs.fs.cat_file(path)
    table = fmt.parse_object(blob) if mode == "zstd" else None
    first_frame = (table.offsets[0], table.offsets[1]) if table else (0, len(blob))
    for offset in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            fs.fs.pipe_file(path, tamper(blob, offset, mask))
            assert_integrity_error(lambda: fs.cat_file(path), path)
            # a range inside frame 0 fails when the flip is in frame 0 or in metadata
            in_other_frame = table is not None and not (first_frame[0] <= offset < first_frame[1]) \
                and table.offsets[0] <= offset < table.offsets[-1]
            if in_other_frame:
                assert fs.cat_file(path, 1, 50) == data[1:50]
            else:
                assert_integrity_error(lambda: fs.cat_file(path, 1, 50), path)
    for length in range(len(blob)):
        fs.fs.pipe_file(path, blob[:length])
        assert_integrity_error(lambda: fs.cat_file(path), path)
        assert_integrity_error(lambda: fs.cat_file(path, 1, 50), path)
    fs.fs.pipe_file(path, blob + b"\x00")
    assert_integrity_error(lambda: fs.cat_file(path), path)


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 40, 5000, 40_000, -300, -60, -9, -1])
def test_truncated_large_object(tmp_path, stored_large, cut):
    fs = over_local(tmp_path)
    fs.fs.pipe_file("obj.bin", stored_large[:cut])
    assert_integrity_error(lambda: fs.cat_file("obj.bin"), "obj.bin")
    assert_integrity_error(lambda: fs.cat_file("obj.bin", 10, 20), "obj.bin")
    assert_integrity_error(lambda: fs.open("obj.bin", "rb"), "obj.bin")
    assert "integrity_error" in fs.info("obj.bin")


def test_foreign_objects_are_integrity_errors(tmp_path):
    fs = over_local(tmp_path)
    fs.fs.pipe_file("plain.txt", b"written below the layer, not compressed")
    fs.fs.pipe_file("plain.zst", pyzstd.compress(b"a plain zstd stream"))
    for name in ("plain.txt", "plain.zst"):
        assert_integrity_error(lambda: fs.cat_file(name), name)
        assert "integrity_error" in fs.ls("", detail=True)[0]
    assert len(fs.ls("")) == 2  # a bad object never breaks a listing


def test_decompression_is_bounded_by_declared_frame_sizes(tmp_path):
    """A crafted object (valid hashes, lying sizes) cannot inflate beyond what it declares."""
    bomb = pyzstd.compress(bytes(50 << 20), {  # 50 MiB of zeros in a 1 KiB window
        pyzstd.CParameter.compressionLevel: 3, pyzstd.CParameter.windowLog: 10,
        pyzstd.CParameter.contentSizeFlag: 0, pyzstd.CParameter.checksumFlag: 1})
    assert len(bomb) * 200 < 50 << 20
    encoder = fmt.SeekableEncoder(1024)
    lie = fmt.EncodedFrame(bomb, 1024, fmt.xxh64_low32(bytes(1024)), fmt.xxh64(bomb), False)
    blob = encoder.header() + encoder.add(lie) + encoder.finish()
    with pytest.raises(fmt.FormatError, match="more than its declared"):
        fmt.decode_object(blob)
    fs = over_local(tmp_path, frame_size=1024)
    fs.fs.pipe_file("bomb.bin", blob)
    assert fs.info("bomb.bin")["size"] == 1024
    assert_integrity_error(lambda: fs.cat_file("bomb.bin"), "bomb.bin")
    assert_integrity_error(lambda: fs.cat_file("bomb.bin", 0, 10), "bomb.bin")
    # a frame asking for a window larger than the frame size allows is refused too
    wide = pyzstd.compress(text(3000), {pyzstd.CParameter.windowLog: 27,
                                        pyzstd.CParameter.contentSizeFlag: 0,
                                        pyzstd.CParameter.checksumFlag: 1})
    with pytest.raises(fmt.FormatError):
        fmt.decode_frame(wide, 3000, fmt.xxh64_low32(text(3000)), fmt.xxh64(wide),
                         fmt.window_log_max(1024))


# -- cost: listings, range reads ------------------------------------------------------------------


def counted(tmp_path, cache="cache", **options):
    counting = Counting(fs=LocalBackend(str(tmp_path / "store"), fsync=False))
    options.setdefault("frame_size", FRAME)
    return Compress(fs=counting, cache_dir=str(tmp_path / cache), **options), counting


def test_listing_n_files_costs_one_target_listing_and_no_reads(tmp_path):
    fs, counting = counted(tmp_path)
    files = {f"dir/f{i:03d}.bin": text(500 + 37 * i, i) for i in range(60)}
    fs.pipe(dict(itertools.islice(files.items(), 30)))        # bulk
    for name, data in itertools.islice(files.items(), 30, 50):
        fs.pipe_file(name, data)                                # one by one
    for name, data in itertools.islice(files.items(), 50, 60):
        with fs.open(name, "wb") as f:                          # streaming
            f.write(data)
    fs.mv("dir/f000.bin", "dir/moved.bin")
    files["dir/moved.bin"] = files.pop("dir/f000.bin")
    counting.reset()
    entries = fs.ls("dir", detail=True)
    assert dict(counting.calls) == {"ls": 1} and counting.bytes_read == 0
    assert {e["name"].rsplit("/", 1)[1]: e["size"] for e in entries} == \
        {k.rsplit("/", 1)[1]: len(v) for k, v in files.items()}
    counting.reset()
    found = fs.find("", detail=True)
    assert counting.bytes_read == 0 and counting.calls["cat_ranges"] == 0
    assert sorted(v["size"] for v in found.values()) == sorted(map(len, files.values()))
    assert fs.du("dir") == sum(map(len, files.values()))

    # another process (a new instance sharing the cache directory): still no reads
    other, other_counting = counted(tmp_path)
    assert sorted(e["size"] for e in other.ls("dir")) == sorted(map(len, files.values()))
    assert dict(other_counting.calls) == {"ls": 1}

    # an empty cache: one bulk ranged read for the whole listing, then cached
    cold, cold_counting = counted(tmp_path, cache="cold-cache")
    assert sorted(e["size"] for e in cold.ls("dir")) == sorted(map(len, files.values()))
    assert dict(cold_counting.calls) == {"ls": 1, "cat_ranges": 1}
    cold_counting.reset()
    cold.ls("dir")
    assert dict(cold_counting.calls) == {"ls": 1}


def test_cached_sizes_are_validated_against_the_target(tmp_path):
    a = over_local(tmp_path, cache_dir=str(tmp_path / "a"))
    b = over_local(tmp_path, cache_dir=str(tmp_path / "b"))
    a.pipe_file("f.bin", text(5000))
    assert a.info("f.bin")["size"] == 5000
    b.pipe_file("f.bin", text(7000, seed=3))  # rewritten by someone a's cache never saw
    assert a.info("f.bin")["size"] == 7000
    assert a.ls("")[0]["size"] == 7000
    assert a.cat_file("f.bin", 6990, None) == text(7000, seed=3)[6990:]
    entry = a.fs.info("f.bin")
    assert a.info("f.bin")["stored_size"] == entry["size"]
    assert "stored_size" not in entry  # the target's own entries are never changed


def test_range_reads_touch_only_the_frames_they_need(tmp_path):
    fs, counting = counted(tmp_path)
    data = mixed(40)
    fs.pipe_file("big.bin", data)
    table = fmt.parse_object(fs.fs.fs.cat_file("big.bin"))
    fs.cat_file("big.bin", 0, 10)  # loads and caches the seek table
    for start, end in [(7 * FRAME + 5, 7 * FRAME + 105), (8 * FRAME - 50, 8 * FRAME + 50),
                       (31 * FRAME, 32 * FRAME)]:
        counting.reset()
        assert fs.cat_file("big.bin", start, end) == data[start:end]
        first, last = table.frame_range(start, end)
        assert counting.reads == [table.offsets[last] - table.offsets[first]]
        assert counting.calls["cat_file"] == 1
        assert last - first <= 2
    with fs.open("big.bin", "rb") as f:
        counting.reset()
        f.seek(20 * FRAME + 3)
        assert f.read(100) == data[20 * FRAME + 3 : 20 * FRAME + 103]
        assert f.read(100) == data[20 * FRAME + 103 : 20 * FRAME + 203]  # same frame: cached
        assert counting.reads == [table.offsets[21] - table.offsets[20]]


# -- writes: streaming, parallel, failures leave nothing --------------------------------------------


def test_streaming_write_keeps_few_frames_in_flight(tmp_path):
    fs = over_local(tmp_path, threads=2)
    data = mixed(64)
    with fs.open("s.bin", "wb") as f:
        most = 0
        for i in range(0, len(data), 3000):
            f.write(data[i : i + 3000])
            most = max(most, len(f._pending))
            assert len(f._buffer) < FRAME
        assert f.tell() == len(data)
    assert most <= fs.threads + 2
    assert fs.cat_file("s.bin") == data
    assert fs.fs.cat_file("s.bin") == fmt.encode_object(data, FRAME)  # same bytes as serial


@pytest.mark.parametrize(("target", "mode"), [("local", "zstd"), ("memory", "zstd"),
                                              ("local", "gzip")])
def test_exception_inside_with_leaves_no_partial_object(tmp_path, memory_root, target, mode):
    fs = over_local(tmp_path, mode=mode) if target == "local" else over_memory(tmp_path, mode=mode)
    root = "" if target == "local" else memory_root
    old, new = f"{root}/old.bin", f"{root}/new.bin"
    fs.pipe_file(old, b"old content")
    for path in (old, new):
        with pytest.raises(RuntimeError):
            with fs.open(path, "wb") as f:
                f.write(mixed(12))
                raise RuntimeError("boom")
    assert not fs.exists(new)
    if target == "local":  # an atomic target keeps the old version
        assert fs.cat_file(old) == b"old content"
        assert not [n for n in snapshot_tree(tmp_path / "store") if "tmp" in n]
    else:  # fsspec memory replaces a file when it is opened: the partial one is removed
        assert not fs.exists(old) or fs.cat_file(old) == b"old content"


@pytest.mark.parametrize("target", ["local", "memory"])
def test_failing_target_writes_leave_no_partial_object(tmp_path, memory_root, target):
    below = LocalBackend(str(tmp_path / "store"), fsync=False) if target == "local" \
        else fsspec.filesystem("memory")
    root = "" if target == "local" else memory_root
    flaky = FaultInjectingFileSystem(fs=below, failure_rate=0.0, operations=["write"],
                                     errors=["ConnectionError"])
    fs = Compress(fs=flaky, frame_size=FRAME, cache_dir=str(tmp_path / "cache"))
    path = f"{root}/f.bin"
    fs.pipe_file(path, b"previous")
    f = fs.open(path, "wb")
    f.write(mixed(10))
    flaky.failure_rate = 1.0
    with pytest.raises(BackendUnavailable):
        with f:
            f.write(mixed(10, seed=5))
            f.write(mixed(10, seed=6))
    flaky.failure_rate = 0.0
    if target == "local":
        assert fs.cat_file(path) == b"previous"
        assert sorted(snapshot_tree(tmp_path / "store")) == ["f.bin"]
    else:
        assert not fs.exists(path) or fs.cat_file(path) == b"previous"


def test_exclusive_and_append_modes(tmp_path):
    fs = over_local(tmp_path)
    with fs.open("x.bin", "xb") as f:
        f.write(b"first")
    with pytest.raises(FileExistsError):
        fs.open("x.bin", "xb")
    with fs.open("x.bin", "ab") as f:
        f.write(text(9000))
    assert fs.cat_file("x.bin") == b"first" + text(9000)
    with pytest.raises(ValueError):
        fs.open("x.bin", "r+b")


def test_put_get_cat_and_bulk_calls(tmp_path):
    fs = over_local(tmp_path)
    local = tmp_path / "local.bin"
    data = mixed(11) + b"end"
    local.write_bytes(data)
    fs.put_file(str(local), "up/a.bin")
    fs.get_file("up/a.bin", str(tmp_path / "down" / "a.bin"))
    assert (tmp_path / "down" / "a.bin").read_bytes() == data
    fs.pipe({"up/b.bin": b"bee", "up/c.bin": text(5000)})
    got = fs.cat(["up/a.bin", "up/b.bin", "up/c.bin"])
    assert [got[k] for k in sorted(got)] == [data, b"bee", text(5000)]
    fs.cp_file("up/c.bin", "up/d.bin")
    assert fs.info("up/d.bin")["size"] == 5000 and fs.cat_file("up/d.bin") == text(5000)
    fs.touch("up/e.bin")
    assert fs.cat_file("up/e.bin") == b"" and fs.info("up/e.bin")["size"] == 0
    fs.fs.pipe_file("up/bad.bin", b"junk")
    assert set(fs.cat(["up/b.bin", "up/bad.bin"], on_error="omit")) == {"/up/b.bin"}
    assert isinstance(fs.cat(["up/bad.bin"], on_error="return")["/up/bad.bin"], IntegrityError)


# -- options, pickling, stack integration -----------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"mode": "lz4"}, {"level": 99}, {"level": "3"}, {"frame_size": 100}, {"frame_size": "huge"},
    {"frame_size": 1 << 30}, {"compression_threshold": 1 << 21}, {"min_saving": 1.5},
    {"threads": 0}, {"mode": "gzip", "level": 12},
])
def test_bad_options_are_refused(tmp_path, options):
    with pytest.raises(InvalidArgument):
        over_local(tmp_path, **options)


def test_defaults_options_and_pickling(tmp_path):
    fs = Compress(fs=LocalBackend(str(tmp_path / "store")), cache_dir=str(tmp_path / "c"))
    assert (fs.mode, fs.level, fs.frame_size, fs.compression_threshold) == ("zstd", 3, 1 << 20, 1024)
    assert over_local(tmp_path, frame_size="64KiB").frame_size == 65536
    assert repr(fs) == f"Compress(Local({str(tmp_path / 'store')!r}))"
    fs.pipe_file("p.bin", text(3000))
    clone = pickle.loads(pickle.dumps(fs))
    assert clone is not fs and clone.cat_file("p.bin") == text(3000)
    assert clone.info("p.bin")["size"] == 3000
    gz = pickle.loads(pickle.dumps(over_local(tmp_path, mode="gzip", level=1)))
    assert (gz.mode, gz.level, gz.frame_size) == ("gzip", 1, FRAME)


def test_stack_config_builds_compress(tmp_path):
    from aiofs.stack import LAYER_TYPES, _import

    assert _import(LAYER_TYPES["compress"]) is Compress


def test_internal_data_is_compressed_and_hidden(tmp_path):
    fs = over_local(tmp_path)
    with internal_access():
        fs.pipe_file(".aiofs/state.bin", text(3000))
        assert fs.cat_file(".aiofs/state.bin") == text(3000)
    assert fs.ls("", detail=False) == []
    assert not fs.exists(".aiofs/state.bin")


def test_bulk_cat_of_large_files_decodes_in_parallel_without_deadlock(tmp_path):
    import threading

    fs = over_local(tmp_path, threads=2)
    files = {f"big{i}.bin": mixed(8, seed=i) for i in range(5)}
    fs.pipe(files)
    result = {}
    worker = threading.Thread(target=lambda: result.update(fs.cat(sorted(files))))
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "bulk cat deadlocked"
    assert {k.lstrip("/"): v for k, v in result.items()} == files


def test_touch_keeps_content_and_cached_size(tmp_path):
    fs, counting = counted(tmp_path)
    fs.pipe_file("t.bin", text(3000))
    fs.touch("t.bin", truncate=False)
    counting.reset()
    assert fs.ls("", detail=True)[0]["size"] == 3000
    assert dict(counting.calls) == {"ls": 1}
    assert fs.cat_file("t.bin") == text(3000)


def test_size_cache_is_sqlite_wal_and_degrades_to_memory(tmp_path):
    import sqlite3

    fs = over_local(tmp_path)
    fs.pipe_file("a.bin", text(2000))
    db = sqlite3.connect(tmp_path / "cache" / "sizes.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA application_id").fetchone()[0] == 0x41494643
    assert db.execute("SELECT name, logical FROM sizes").fetchall() == [("/a.bin", 2000)]
    db.close()
    (tmp_path / "not-a-dir").write_text("x")
    broken = over_local(tmp_path, cache_dir=str(tmp_path / "not-a-dir"))
    broken.pipe_file("b.bin", text(3000))
    assert broken.info("b.bin")["size"] == 3000
    assert broken.ls("", detail=True)[1]["size"] == 3000
