"""aiofs cleanup: dry run changes nothing, --apply removes exactly what it listed."""

import json
import os
import time

import pytest
from click.testing import CliRunner

from aiofs.backends.local import LocalBackend
from aiofs.cli import cli
from aiofs.layer import Layer
from aiofs.layers.quota import Quota
from aiofs.optimize.cleanup import CleanupRules, apply_cleanup, cleanup, find_cleanup
from aiofs.stack import open_stack

DAY = 86400
TEMP = ["/w/report.tmp", "/w/~$letter.txt", "/w/.~lock.sheet.ods#", "/w/.notes.txt.swp",
        "/.DS_Store", "/pics/Thumbs.db", "/dl/movie.mp4.part", "/dl/setup.exe.crdownload"]
KEEP = ["/w/report.txt", "/w/tmp.txt", "/dl/new.bin", "/keep/old.bin"]


@pytest.fixture
def env(isolated_storage, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return isolated_storage


def make_store(fs, root, now):
    files = {p: p.encode() * 10 for p in TEMP + KEEP + ["/dl/old.bin", "/w/fresh.tmp"]}
    fs.pipe(files)
    for path in files:
        days = {"/dl/old.bin": 100, "/keep/old.bin": 100, "/w/fresh.tmp": 0}.get(path, 2)
        t = now - days * DAY - 60
        os.utime(os.path.join(root, path.lstrip("/")), (t, t))
    fs.invalidate_cache()
    return files


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "store")
    fs = Quota(fs=LocalBackend(root), db_path=str(tmp_path / "q.db"), max_bytes=None)
    now = time.time()
    return fs, root, now, make_store(fs, root, now)


def test_dry_run_lists_temp_and_old_files_and_changes_nothing(store, snapshot, tmp_path):
    fs, root, now, files = store
    before = snapshot(root)
    rules = CleanupRules(older_than_days=30, folders=["/dl"])
    plan = find_cleanup(fs, rules=rules, now=now)
    listed = {c["path"]: c["kind"] for c in plan["candidates"]}
    assert listed == {**dict.fromkeys(TEMP, "temp"), "/dl/old.bin": "old"}  # fresh.tmp is too young
    assert plan["bytes"] == sum(len(files[p]) for p in listed) and plan["dry_run"]
    assert plan["by_kind"]["old"] == {"files": 1, "bytes": len(files["/dl/old.bin"])}
    assert snapshot(root) == before
    young = find_cleanup(fs, rules=CleanupRules(temp_min_age_hours=0), now=now)
    assert "/w/fresh.tmp" in {c["path"] for c in young["candidates"]}


def test_apply_removes_exactly_the_listed_files(store):
    fs, root, now, files = store
    rules = CleanupRules(older_than_days=30, folders=["/dl"])
    result = cleanup(fs, rules=rules, now=now, apply=True)
    listed = [c["path"] for c in result["candidates"]]
    applied = result["applied"]
    assert sorted(applied["removed"]) == sorted(listed) and not applied["skipped"]
    assert applied["bytes_freed"] == sum(len(files[p]) for p in listed)
    remaining = set(fs.find("/"))
    assert remaining == set(files) - set(listed)
    assert fs.find_layer(Quota).usage()["used"] == sum(len(files[p]) for p in remaining)


def test_a_file_changed_since_the_scan_is_not_removed(store):
    fs, root, now, files = store
    plan = find_cleanup(fs, rules=CleanupRules(), now=now)
    fs.pipe_file("/w/report.tmp", b"rewritten, now in use")
    applied = apply_cleanup(fs, plan)
    assert {"path": "/w/report.tmp", "reason": "changed since the scan"} in applied["skipped"]
    assert fs.cat_file("/w/report.tmp") == b"rewritten, now in use"
    assert applied["files"] == len(TEMP) - 1


def test_bad_input_gets_a_code_and_changes_nothing(store, snapshot):
    fs, root, now, _ = store
    before = snapshot(root)
    for kwargs, code in [({"older_than_days": -1, "folders": ["/dl"]}, "INVALID_ARGUMENT"),
                         ({"older_than_days": 5}, "INVALID_ARGUMENT"),
                         ({"folders": ["/dl"]}, "INVALID_ARGUMENT")]:
        with pytest.raises(Exception) as info:
            CleanupRules(**kwargs)
        assert info.value.code == code
    with pytest.raises(Exception) as info:
        cleanup(fs, rules=CleanupRules(older_than_days=1, folders=["../outside"]), apply=True)
    assert info.value.code == "INVALID_PATH"
    assert snapshot(root) == before


def test_cli_dry_run_then_apply_with_config_rules(env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[cleanup]\nolder_than_days = 30\nfolders = ["/dl"]\ntemp_min_age_hours = 1\n')
    fs = open_stack("default")
    now = time.time()
    fs.pipe({"/dl/old.txt": b"o" * 100, "/dl/new.txt": b"n" * 10, "/w/a.tmp": b"t" * 50,
             "/w/keep.txt": b"k"})
    for path, days in {"/dl/old.txt": 90, "/w/a.tmp": 1}.items():
        t = now - days * DAY
        os.utime(env / path.lstrip("/"), (t, t))
    fs.invalidate_cache()
    base = ["--config", str(config), "cleanup"]
    dry = CliRunner().invoke(cli, base + ["--json"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert [c["path"] for c in plan["candidates"]] == ["/dl/old.txt", "/w/a.tmp"]
    assert plan["applied"] is None and (env / "dl" / "old.txt").exists()
    text = CliRunner().invoke(cli, base + ["--apply"], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "freed 150 B (150 B" in text.output
    assert sorted(fs.find("/")) == ["/dl/new.txt", "/w/keep.txt"]
    bad = CliRunner().invoke(cli, base + ["--older-than", "-2"])
    assert bad.exit_code == 1 and "aiofs: error [INVALID_ARGUMENT]:" in bad.output
    config.write_text('[cleanup]\nolder_than_days = "soon"\n')
    bad = CliRunner().invoke(cli, base)
    assert bad.exit_code == 1 and "aiofs: error [CONFIG_ERROR]:" in bad.output


class KeepsVersions(Layer):
    """A layer with old versions to drop, through the documented duck-typed hook (the
    Versioning layer will implement the same two methods)."""

    def __init__(self, fs=None, **kw):
        super().__init__(fs=fs, **kw)
        self.versions = {("/w/report.txt", "v1"): 700, ("/w/report.txt", "v2"): 300}

    def cleanup_candidates(self, now=None):
        return [{"path": p, "size": size, "reason": f"version {v} beyond the last 1", "version_id": v}
                for (p, v), size in sorted(self.versions.items())]

    def apply_cleanup(self, candidates):
        return sum(self.versions.pop((c["path"], c["version_id"])) for c in candidates)


def test_layers_offer_candidates_through_the_hook(tmp_path):
    from aiofs.optimize.recommend import recommend

    root = str(tmp_path / "store")
    fs = KeepsVersions(fs=LocalBackend(root))
    now = time.time()
    make_store(fs, root, now)
    plan = find_cleanup(fs, rules=CleanupRules(temp=False), now=now)
    assert [(c["path"], c["kind"], c["version_id"]) for c in plan["candidates"]] == [
        ("/w/report.txt", "version", "v1"), ("/w/report.txt", "version", "v2")]
    assert plan["bytes"] == 1000 and find_cleanup(fs, "/dl", rules=CleanupRules(temp=False))["files"] == 0
    versions = [i for i in recommend(fs, now=now)["recommendations"] if i["kind"] == "versions"]
    assert versions[0]["saving_bytes"] == 1000 and versions[0]["files"] == 2
    applied = apply_cleanup(fs, plan)
    assert applied["bytes_freed"] == 1000 and applied["files"] == 2 and fs.versions == {}
    assert fs.cat_file("/w/report.txt") == b"/w/report.txt" * 10
