"""FaultInjectingFileSystem: seeded failures, unplug/plug, nothing written on a failure."""

from __future__ import annotations

import pickle

import fsspec
import pytest

from aiofs import Layer, LocalBackend
from aiofs.errors import BackendUnavailable, InvalidArgument, Timeout, code_for
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.faults import FaultInjectingFileSystem, FaultyFile
from conftest import snapshot_tree

INJECTED = (ConnectionError, TimeoutError)


def local(tmp_path, **options):
    return FaultInjectingFileSystem(fs=LocalBackend(str(tmp_path / "store")), **options)


def outcomes(fs, calls=300):
    """Run ``calls`` info calls; return the pattern of failures (None for success)."""
    fs.fs.pipe_file("probe.txt", b"probe")
    pattern = []
    for _ in range(calls):
        try:
            fs.info("probe.txt")
            pattern.append(None)
        except INJECTED as exc:
            pattern.append(type(exc).__name__)
    return pattern


# -- with no failures it is a correct layer: the shipped suites pass through it --------------


class TestFaultsLayerAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return local(tmp_path, failure_rate=0.0), "/data"


class TestFaultsLayerConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return local(tmp_path, failure_rate=0.0), "/"


# -- determinism and rate ------------------------------------------------------------------


def test_same_seed_same_failures(tmp_path):
    a = outcomes(local(tmp_path / "a", failure_rate=0.3, seed=42))
    b = outcomes(local(tmp_path / "b", failure_rate=0.3, seed=42))
    c = outcomes(local(tmp_path / "c", failure_rate=0.3, seed=43))
    assert a == b
    assert a != c
    assert {"BackendUnavailable", "Timeout"} <= set(a)  # both kinds by default


def test_reset_replays_the_sequence(tmp_path):
    fs = local(tmp_path, failure_rate=0.5, seed=7)
    first = outcomes(fs, 100)
    fs.reset()
    assert fs.calls == 0 and fs.failures == 0
    assert outcomes(fs, 100) == first


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.7])
def test_failure_fraction_is_roughly_the_rate(tmp_path, rate):
    fs = local(tmp_path, failure_rate=rate, seed=1)
    pattern = outcomes(fs, 3000)
    failed = sum(p is not None for p in pattern)
    assert fs.calls == 3000
    assert fs.failures == failed
    assert fs.call_counts["info"] == 3000 and fs.failure_counts["info"] == failed
    assert abs(failed / 3000 - rate) < 0.04


def test_rate_zero_never_fails_and_one_always_fails(tmp_path):
    assert set(outcomes(local(tmp_path / "a", failure_rate=0.0), 200)) == {None}
    assert None not in outcomes(local(tmp_path / "b", failure_rate=1.0), 200)


@pytest.mark.parametrize(
    ("errors", "expected"),
    [(["ConnectionError"], BackendUnavailable), (["TimeoutError"], Timeout)],
)
def test_error_kinds_option(tmp_path, errors, expected):
    fs = local(tmp_path, failure_rate=1.0, errors=errors)
    with pytest.raises(expected) as info:
        fs.ls("")
    assert "injected fault" in str(info.value)
    assert code_for(info.value) == expected.code


def test_operations_option_limits_what_fails(tmp_path):
    fs = local(tmp_path, failure_rate=1.0, operations=["pipe_file"])
    with pytest.raises(INJECTED):
        fs.pipe_file("a.txt", b"x")
    assert fs.ls("", detail=False) == []
    assert fs.failures == 1 and fs.calls == 2


@pytest.mark.parametrize(
    "options",
    [{"failure_rate": 1.5}, {"failure_rate": -0.1}, {"errors": []}, {"errors": ["OSError"]}],
)
def test_invalid_options(tmp_path, options):
    with pytest.raises(InvalidArgument):
        local(tmp_path, **options)


# -- unplug / plug ------------------------------------------------------------------------------


def test_unplug_fails_everything_and_plug_restores(tmp_path):
    fs = local(tmp_path, failure_rate=0.0)
    fs.pipe_file("a.txt", b"before")
    fs.unplug()
    for call in (
        lambda: fs.cat_file("a.txt"), lambda: fs.ls(""), lambda: fs.exists("a.txt"),
        lambda: fs.pipe_file("a.txt", b"during"), lambda: fs.rm("a.txt"),
        lambda: fs.open("a.txt", "rb"),
    ):
        try:
            result = call()
        except ConnectionError:
            continue
        # exists() swallows every error and answers False, as fsspec defines it.
        assert result is False
    fs.plug()
    assert fs.cat_file("a.txt") == b"before"
    assert fs.ls("", detail=False) == ["/a.txt"]


def test_unplugged_option_and_counters(tmp_path):
    fs = local(tmp_path, failure_rate=0.0, unplugged=True)
    for _ in range(5):
        with pytest.raises(BackendUnavailable) as info:
            fs.info("x")
        assert "unplugged" in str(info.value)
    assert (fs.calls, fs.failures) == (5, 5)
    fs.plug()
    assert not fs.exists("x")


# -- a failed call changes nothing ------------------------------------------------------------


def test_failed_writes_write_nothing(tmp_path):
    fs = local(tmp_path, failure_rate=1.0)
    fs.fs.pipe_file("keep.txt", b"keep")
    fs.fs.pipe_file("dir/inner.txt", b"inner")
    local_file = tmp_path / "upload.bin"
    local_file.write_bytes(b"upload")
    before = snapshot_tree(tmp_path)
    attempts = [
        lambda: fs.pipe_file("new.txt", b"x"),
        lambda: fs.pipe({"n1.txt": b"1", "n2.txt": b"2"}),
        lambda: fs.pipe_file("keep.txt", b"overwrite"),
        lambda: fs.put_file(str(local_file), "put.bin"),
        lambda: fs.cp_file("keep.txt", "copy.txt"),
        lambda: fs.mv("keep.txt", "moved.txt"),
        lambda: fs.rm_file("keep.txt"),
        lambda: fs.rm("dir", recursive=True),
        lambda: fs.mkdir("newdir"),
        lambda: fs.makedirs("a/b/c", exist_ok=True),
        lambda: fs.touch("touched.txt"),
        lambda: fs.open("opened.txt", "wb"),
    ]
    for attempt in attempts:
        with pytest.raises(INJECTED):
            attempt()
    assert snapshot_tree(tmp_path) == before
    assert fs.failures == len(attempts)


def test_one_decision_per_call_so_composite_calls_are_all_or_nothing(tmp_path):
    # A recursive rm lists before it deletes; the decision is taken once, up front.
    fs = local(tmp_path, failure_rate=0.5, seed=3)
    outcomes_seen = set()
    for i in range(40):
        for name in ("a", "b/c", "b/d/e"):
            fs.fs.pipe_file(f"t{i}/{name}.txt", b"x")
        calls_before = fs.calls
        try:
            fs.rm(f"t{i}", recursive=True)
            outcomes_seen.add("ok")
            assert not fs.fs.exists(f"t{i}")
        except INJECTED:
            outcomes_seen.add("failed")
            assert sorted(fs.fs.find(f"t{i}")) == [
                f"/t{i}/a.txt", f"/t{i}/b/c.txt", f"/t{i}/b/d/e.txt"
            ]
        assert fs.calls == calls_before + 1
    assert outcomes_seen == {"ok", "failed"}


def test_writes_under_faults_match_a_model(tmp_path):
    fs = local(tmp_path, failure_rate=0.4, seed=11)
    model = {}
    for i in range(300):
        path, data = f"f{i % 17}.txt", f"v{i}".encode()
        try:
            fs.pipe_file(path, data)
            model[path] = data
        except INJECTED:
            pass
    assert 0 < fs.failures < fs.calls
    assert {p.lstrip("/"): fs.fs.cat_file(p) for p in fs.fs.find("")} == model


# -- open files ---------------------------------------------------------------------------------


def test_open_fails_at_open_time(tmp_path):
    fs = local(tmp_path, failure_rate=1.0, operations=["open"])
    fs.fs.pipe_file("a.txt", b"old")
    with pytest.raises(INJECTED):
        fs.open("a.txt", "rb")
    with pytest.raises(INJECTED):
        with fs.open("a.txt", "wb") as f:
            f.write(b"new")
    assert fs.fs.cat_file("a.txt") == b"old"
    assert fs.failure_counts["open"] == 2


def test_failed_write_on_an_open_file_keeps_the_old_content(tmp_path):
    fs = local(tmp_path, failure_rate=1.0, operations=["write"])
    fs.fs.pipe_file("a.txt", b"old")
    with pytest.raises(INJECTED):
        with fs.open("a.txt", "wb") as f:
            assert isinstance(f, FaultyFile)
            f.write(b"new")
    assert fs.fs.cat_file("a.txt") == b"old"
    assert snapshot_tree(tmp_path / "store") == {"a.txt": b"old"}  # no temp file left


def test_reads_on_an_open_file_fail_and_recover(tmp_path):
    fs = local(tmp_path, failure_rate=0.0)
    fs.fs.pipe_file("a.txt", b"0123456789")
    with fs.open("a.txt", "rb") as f:
        assert f.read(3) == b"012"
        fs.unplug()
        with pytest.raises(ConnectionError):
            f.read(3)
        assert f.tell() == 3  # the failed read consumed nothing
        fs.plug()
        f.seek(-2, 2)
        assert f.read() == b"89"


def test_text_mode_and_lines_through_the_wrapper(tmp_path):
    fs = local(tmp_path, failure_rate=0.0)
    with fs.open("t.txt", "w") as f:
        f.write("héllo\nworld\n")
    with fs.open("t.txt", "r") as f:
        assert f.read() == "héllo\nworld\n"
    with fs.open("t.txt", "rb") as f:
        assert f.readline() == "héllo\n".encode()
        assert list(f) == [b"world\n"]


# -- plain data, pickling, stacking ------------------------------------------------------------


def test_pickles_with_its_options(tmp_path):
    fs = local(tmp_path, failure_rate=0.25, seed=9, errors=["TimeoutError"])
    clone = pickle.loads(pickle.dumps(fs))
    assert (clone.failure_rate, clone.seed, clone.errors) == (0.25, 9, ["TimeoutError"])
    assert outcomes(clone, 100) == outcomes(local(tmp_path / "x", failure_rate=0.25, seed=9,
                                                  errors=["TimeoutError"]), 100)


def test_wraps_any_fsspec_filesystem(memory_root):
    fs = FaultInjectingFileSystem(fs=Layer(fs=fsspec.filesystem("memory")), failure_rate=0.0)
    fs.pipe_file(f"{memory_root}/a.txt", b"mem")
    assert fs.cat_file(f"{memory_root}/a.txt") == b"mem"
    assert repr(fs) == "FaultInjectingFileSystem(Layer(Memory()))"
    fs.unplug()
    with pytest.raises(ConnectionError):
        fs.cat_file(f"{memory_root}/a.txt")
