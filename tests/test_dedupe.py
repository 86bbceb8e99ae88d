"""aiofs dedupe: identical files by content, same-size files kept apart, --merge by hard links."""

import json
import os
import random

import blake3
import pytest
from click.testing import CliRunner

from aiofs.backends.local import LocalBackend
from aiofs.cli import cli
from aiofs.layer import Layer
from aiofs.layers.compress import Compress
from aiofs.layers.encrypt import Encrypt
from aiofs.layers.quota import Quota
from aiofs.optimize.duplicates import find_duplicates, merge_duplicates
from aiofs.optimize.overview import overview
from aiofs.stack import open_stack

DATA = random.Random(1).randbytes(5000)
BIG = random.Random(2).randbytes(2 << 20)


@pytest.fixture
def env(isolated_storage, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return isolated_storage


def fill(fs):
    fs.pipe({
        "/a/x.bin": DATA, "/b/y.bin": DATA, "/c/z.bin": DATA,
        "/same-size.bin": DATA[:-1] + bytes([DATA[-1] ^ 1]),   # same size, other content
        "/other.bin": DATA[:100],
        "/e1.bin": b"", "/e2.bin": b"",                         # empty files waste nothing
        "/big1.bin": BIG, "/big2.bin": BIG,
        "/big3.bin": BIG[:-1] + b"\x00" if BIG[-1] else BIG[:-1] + b"\x01",  # same prefix and size
    })


def stack(tmp_path, *layers):
    fs = LocalBackend(str(tmp_path / "store"))
    for make in layers:
        fs = make(fs)
    return fs


def test_finds_duplicates_not_same_size_files(tmp_path):
    fs = stack(tmp_path, lambda f: Compress(fs=f, cache_dir=str(tmp_path / "cache")))
    fill(fs)
    report = find_duplicates(fs)
    groups = {tuple(g["paths"]): g for g in report["groups"]}
    assert set(groups) == {("/a/x.bin", "/b/y.bin", "/c/z.bin"), ("/big1.bin", "/big2.bin")}
    small = groups[("/a/x.bin", "/b/y.bin", "/c/z.bin")]
    assert small["hash"] == blake3.blake3(DATA).hexdigest() and small["wasted_bytes"] == 10000
    assert report["wasted_bytes"] == 10000 + len(BIG) and report["duplicate_files"] == 3
    assert report["groups"][0]["paths"] == ["/big1.bin", "/big2.bin"]  # largest waste first
    # /other.bin has a size of its own and empty files are ignored: never read
    assert report["files_hashed"] == 7 and report["files_scanned"] == 8
    assert find_duplicates(fs, "/a")["groups"] == []


class KnownHashes(Layer):
    """A layer that reports each file's blake3 in its entries (as the Dedup layer will) and
    counts reads, to show such files are never read."""

    def __init__(self, fs=None, **kw):
        super().__init__(fs=fs, **kw)
        self.reads = 0

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        found = super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        out = {}
        for name, e in found.items():
            if e["type"] == "file":
                e = {**e, "blake3": blake3.blake3(self.fs.cat_file(name)).hexdigest()}
            out[name] = e
        return out if detail else sorted(out)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.reads += 1
        return super().cat_file(path, start=start, end=end, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        self.reads += "r" in mode
        return super()._open(path, mode=mode, **kwargs)


def test_a_known_hash_in_the_entry_is_used_without_reading(tmp_path):
    fs = stack(tmp_path, lambda f: KnownHashes(fs=f))
    fill(fs)
    report = find_duplicates(fs)
    assert fs.reads == 0 and report["files_hashed"] == 0 and report["known_hashes"] == 8
    assert len(report["groups"]) == 2 and report["wasted_bytes"] == 10000 + len(BIG)


def test_merge_hard_links_on_a_local_store_and_overwrite_breaks_the_link(tmp_path):
    fs = stack(tmp_path, lambda f: Compress(fs=f, cache_dir=str(tmp_path / "cache")),
               lambda f: Quota(fs=f, db_path=str(tmp_path / "q.db"), max_bytes=None))
    fill(fs)
    root = tmp_path / "store"
    stored_before = overview(fs, history=str(tmp_path / "h.db"))["local_storage"]["stored_bytes"]
    sizes = {p: os.path.getsize(root / p) for p in ("b/y.bin", "c/z.bin", "big2.bin")}
    result = merge_duplicates(fs)
    assert result["mode"] == "hardlink" and result["merged_files"] == 3 and not result["skipped"]
    assert result["bytes_saved"] == sum(sizes.values())
    ino = {p: os.stat(root / p).st_ino for p in ("a/x.bin", "b/y.bin", "c/z.bin", "big1.bin", "big2.bin")}
    assert ino["a/x.bin"] == ino["b/y.bin"] == ino["c/z.bin"] and ino["big1.bin"] == ino["big2.bin"]
    assert os.stat(root / "a/x.bin").st_nlink == 3
    for p in ("/a/x.bin", "/b/y.bin", "/c/z.bin"):
        assert fs.cat_file(p) == DATA
    after = overview(fs, history=str(tmp_path / "h.db"))["local_storage"]
    assert after["stored_bytes"] == stored_before - result["bytes_saved"]
    assert after["logical_bytes"] == fs.du("/")
    assert sum(g["stored_wasted_bytes"] for g in find_duplicates(fs)["groups"]) == 0
    assert merge_duplicates(fs)["merged_files"] == 0  # already shared

    fs.pipe_file("/b/y.bin", b"new content")      # temp file + rename: a new inode
    with fs.open("/c/z.bin", "ab") as f:           # append copies first: a new inode too
        f.write(b"!")
    assert fs.cat_file("/a/x.bin") == DATA and fs.cat_file("/b/y.bin") == b"new content"
    assert fs.cat_file("/c/z.bin") == DATA + b"!"
    assert os.stat(root / "a/x.bin").st_nlink == 1
    assert [g["paths"] for g in find_duplicates(fs)["groups"]] == [["/big1.bin", "/big2.bin"]]


def test_merge_skips_when_stored_bytes_differ(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    fs = stack(tmp_path, lambda f: Encrypt(fs=f, key_file=str(key)))
    fill(fs)
    result = merge_duplicates(fs)
    assert result["mode"] == "hardlink" and result["merged_files"] == 0 and result["bytes_saved"] == 0
    assert {s["path"] for s in result["skipped"]} == {"/a/x.bin", "/b/y.bin", "/c/z.bin",
                                                      "/big1.bin", "/big2.bin"}
    assert len({os.stat(tmp_path / "store" / p).st_ino for p in ("a/x.bin", "b/y.bin")}) == 2


class SharesChunks(Layer):
    """Stands for the coming Dedup layer: found by its capability, reports stats()."""

    adds_capabilities = frozenset({"dedup"})

    def stats(self):
        return {"logical_bytes": 1, "stored_bytes": 1, "dedup_ratio": 1.0, "chunks": 1, "packs": 1}


def test_merge_with_a_dedup_layer_changes_nothing(tmp_path, snapshot):
    fs = stack(tmp_path, lambda f: SharesChunks(fs=f))
    fill(fs)
    before = snapshot(tmp_path / "store")
    result = merge_duplicates(fs)
    assert result["mode"] == "dedup-layer" and result["merged_files"] == 0
    assert result["already_shared_files"] == 3 and result["layer_stats"]["dedup_ratio"] == 1.0
    assert snapshot(tmp_path / "store") == before


def test_merge_unsupported_on_memory(memory_root):
    import fsspec

    fs = Layer(fs=fsspec.filesystem("memory"))
    fs.pipe({f"{memory_root}/a": DATA, f"{memory_root}/b": DATA})
    result = merge_duplicates(fs, memory_root)
    assert result["mode"] == "unsupported" and result["merged_files"] == 0
    assert fs.cat_file(f"{memory_root}/b") == DATA


CONFIG = """
[stacks.plain]
layers = [{ type = "compress" }]
backend = { type = "local", root = "%s" }
"""


def test_cli_dedupe_and_merge(env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG % (tmp_path / "plain"))
    fs = open_stack("plain", str(config))
    fill(fs)
    base = ["--config", str(config), "dedupe"]
    result = CliRunner().invoke(cli, base + ["plain:/", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["merge"] is None and data["duplicate_files"] == 3
    text = CliRunner().invoke(cli, base + ["plain", "--merge"], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "merge (hardlink): hard-linked 3 duplicate files" in text.output
    assert os.stat(tmp_path / "plain" / "a" / "x.bin").st_ino == os.stat(tmp_path / "plain" / "c" / "z.bin").st_ino
    assert fs.cat_file("/c/z.bin") == DATA
    bad = CliRunner().invoke(cli, base + ["nope:/"])
    assert bad.exit_code == 1 and "aiofs: error [CONFIG_ERROR]:" in bad.output


def test_with_the_dedup_layer_hashes_are_known_and_storage_already_shared(tmp_path, monkeypatch):
    from aiofs.layers.dedup import Dedup

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fs = Quota(fs=Dedup(fs=LocalBackend(str(tmp_path / "store"))), db_path=str(tmp_path / "q.db"),
               max_bytes=None)
    fill(fs)
    report = find_duplicates(fs)
    assert report["files_hashed"] == 0 and report["known_hashes"] == 8
    assert [g["paths"] for g in report["groups"]] == [["/big1.bin", "/big2.bin"],
                                                      ["/a/x.bin", "/b/y.bin", "/c/z.bin"]]
    merged = merge_duplicates(fs, report=report)
    assert merged["mode"] == "dedup-layer" and merged["already_shared_files"] == 3
    assert merged["layer_stats"]["dedup_ratio"] > 1
    data = overview(fs, history=str(tmp_path / "h.db"))
    assert data["layers"]["dedup"]["logical_bytes"] == data["local_storage"]["logical_bytes"]
