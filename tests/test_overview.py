"""aiofs overview: shape and numbers on a known store, usage history per day, CLI."""

import json
import os
import sqlite3

import pytest
from click.testing import CliRunner

from aiofs.backends.local import LocalBackend
from aiofs.cli import cli
from aiofs.layers.compress import Compress
from aiofs.layers.quota import Quota
from aiofs.optimize.overview import overview
from aiofs.optimize.usage_history import APPLICATION_ID, UsageHistory
from aiofs.stack import open_stack

NOW = 1_800_000_000.0
DAY = 86400


@pytest.fixture
def env(isolated_storage, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # history and quota state
    return isolated_storage


def age(root, path, days):
    t = NOW - days * DAY - 60
    os.utime(os.path.join(root, path.lstrip("/")), (t, t))


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "store")
    fs = Quota(fs=Compress(fs=LocalBackend(root), cache_dir=str(tmp_path / "cache")),
               db_path=str(tmp_path / "quota.db"), max_bytes=10_000)
    files = {  # path: (size, age in days)
        "/photos/a.jpg": (1000, 2), "/photos/b.svg": (500, 10), "/videos/c.mp4": (3000, 100),
        "/docs/d.pdf": (200, 400), "/code/e.py": (50, 0), "/notes.bin": (7, 0),
    }
    for path, (size, _) in files.items():
        fs.pipe_file(path, bytes([len(path)]) * size)
    fs.makedirs("/empty", exist_ok=True)
    for path, (_, days) in files.items():
        age(root, path, days)
    fs.invalidate_cache()
    return fs, root


def test_overview_shape_and_numbers(store, tmp_path):
    fs, root = store
    data = overview(fs, name="known", history=str(tmp_path / "h.db"), now=NOW)
    assert set(data) >= {"google_drive", "local_storage", "layers", "usage_by_type",
                         "usage_by_folder", "usage_by_age", "history", "largest_files"}
    assert data["google_drive"] == {"connected": False, "usage_in_drive": None, "usage_in_drive_trash": None,
                                    "quota": {"limit": None, "usage": None, "usage_percentage": None}}
    local = data["local_storage"]
    assert local["files"] == 6 and local["logical_bytes"] == 4757 and local["root"] == root
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, dirs, names in os.walk(root)
                  if ".aiofs" not in d for f in names)
    assert local["stored_bytes"] == on_disk != 4757  # compressed objects, counted from the bottom
    assert local["quota"] == {"limit": 10_000, "usage": 4757, "usage_percentage": pytest.approx(47.57)}
    assert local["usage_percentage"] == pytest.approx(47.57)
    assert data["layers"]["quota"]["used"] == 4757 and data["layers"]["quota"]["max_bytes"] == 10_000
    assert "compress" not in data["layers"]  # no stats() there
    assert data["stack_layers"] == ["quota", "compress", "local"]
    t = {k: (v["files"], v["bytes"]) for k, v in data["usage_by_type"].items()}
    assert t == {"image": (2, 1500), "video": (1, 3000), "document": (1, 200), "code": (1, 50),
                 "other": (1, 7)}
    folders = {k: v["bytes"] for k, v in data["usage_by_folder"].items()}
    assert list(folders) == ["/videos", "/photos", "/docs", "/code", "/", "/empty"]
    assert folders == {"/videos": 3000, "/photos": 1500, "/docs": 200, "/code": 50, "/": 7, "/empty": 0}
    ages = {k: (v["files"], v["bytes"]) for k, v in data["usage_by_age"].items()}
    assert ages == {"<7d": (3, 1057), "<30d": (1, 500), "<365d": (1, 3000), "older": (1, 200),
                    "unknown": (0, 0)}
    assert data["largest_files"][0] == {"path": "/videos/c.mp4", "size": 3000,
                                        "mtime": pytest.approx(NOW - 100 * DAY - 60)}
    json.dumps(data)  # what the API serves
    sub = overview(fs, path="/photos", history=str(tmp_path / "h.db"), now=NOW)
    assert sub["local_storage"]["logical_bytes"] == 1500 and list(sub["usage_by_folder"]) == ["/photos"]


def test_history_one_row_per_day(store, tmp_path):
    fs, _ = store
    db = str(tmp_path / "history.db")
    overview(fs, name="s", history=db, today="2026-01-01", now=NOW)
    fs.pipe_file("/more.bin", b"m" * 1000)
    overview(fs, name="s", history=db, today="2026-01-02", now=NOW)
    fs.pipe_file("/more2.bin", b"n" * 243)
    data = overview(fs, name="s", history=db, today="2026-01-02", now=NOW)  # same day: updated
    assert [(d["date"], d["logical_bytes"], d["files"]) for d in data["history"]["days"]] == [
        ("2026-01-01", 4757, 6), ("2026-01-02", 6000, 8)]
    data = overview(fs, name="s", history=db, today="2026-01-05", now=NOW)
    assert len(data["history"]["days"]) == 3
    assert data["history"]["growth_bytes_per_day"] == pytest.approx((6000 - 4757) / 4)
    assert data["history"]["days"][-1]["by_type"]["image"] == 1500
    assert overview(fs, name="other", history=db, today="2026-01-05", record=False)["history"]["days"] == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM usage_history").fetchone()[0] == 3


def test_history_refuses_a_foreign_database(tmp_path):
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    with pytest.raises(Exception) as info:
        UsageHistory(path)
    assert info.value.code == "CONFIG_ERROR"


def test_cli_overview_on_the_default_stack(env):
    fs = open_stack("default")
    fs.pipe({"/src/main.py": b"print(1)\n" * 50, "/notes/todo.md": b"- a\n" * 10, "/logo.svg": b"<svg/>"})
    result = CliRunner().invoke(cli, ["overview", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["stack"] == "default" and data["local_storage"]["files"] == 3
    assert data["usage_by_type"]["code"] == {"files": 1, "bytes": 450}
    assert data["usage_by_folder"]["/src"]["bytes"] == 450
    assert data["layers"]["quota"]["used"] == 450 + 40 + 6
    assert len(data["history"]["days"]) == 1
    text = CliRunner().invoke(cli, ["overview", "default:/src"], catch_exceptions=False)
    assert text.exit_code == 0 and "by type:" in text.output and "/src" in text.output
    for args, code in [(["overview", "nope"], "CONFIG_ERROR"), (["overview", "default:/missing"], "NOT_FOUND"),
                       (["overview", "default:/../x"], "INVALID_PATH")]:
        bad = CliRunner().invoke(cli, args)
        assert bad.exit_code == 1 and f"aiofs: error [{code}]:" in bad.output, (args, bad.output)
