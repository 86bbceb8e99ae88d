"""aiofs recommend: ranked by estimated saving, each item computed from the store."""

import json
import os
import random
import time

import pytest
from click.testing import CliRunner

from aiofs.backends.local import LocalBackend
from aiofs.cli import cli
from aiofs.layers.compress import Compress
from aiofs.layers.quota import Quota
from aiofs.optimize.recommend import recommend
from aiofs.stack import open_stack

DAY = 86400
TEXT = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(60000))
NOISE = random.Random(3).randbytes(3 << 20)
DUP = random.Random(4).randbytes(300 << 10)


@pytest.fixture
def env(isolated_storage, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return isolated_storage


def fill(fs, root, now):
    fs.pipe({"/logs/big.log": TEXT, "/media/noise.bin": NOISE,
             "/a/dup.bin": DUP, "/b/dup.bin": DUP, "/c/dup.bin": DUP,
             "/w/draft.tmp": b"t" * 4000, "/archive/2019.csv": b"year,value\n" * 2000})
    for path, days in {"/w/draft.tmp": 3, "/archive/2019.csv": 400}.items():
        t = now - days * DAY
        os.utime(os.path.join(root, path.lstrip("/")), (t, t))
    fs.invalidate_cache()


def test_recommendations_ranked_by_saving(tmp_path):
    root = str(tmp_path / "store")
    fs = Quota(fs=LocalBackend(root), db_path=str(tmp_path / "q.db"), max_bytes=8 << 20)
    now = time.time()
    fill(fs, root, now)
    result = recommend(fs, now=now)
    items = {i["kind"]: i for i in result["recommendations"]}
    assert set(items) == {"quota", "compress", "duplicates", "temporary", "cold"}
    savings = [i["saving_bytes"] for i in result["recommendations"]]
    assert savings == sorted(savings, reverse=True) and all(isinstance(s, int) and s > 0 for s in savings)
    assert [i["rank"] for i in result["recommendations"]] == list(range(1, 6))
    # text compresses well, random bytes not at all: the estimate is most of the text file only
    assert 0.8 * len(TEXT) < items["compress"]["saving_bytes"] < len(TEXT)
    assert items["compress"]["files"] == 2
    assert items["duplicates"]["saving_bytes"] == 2 * len(DUP) and items["duplicates"]["files"] == 2
    assert "--merge" in items["duplicates"]["action"]
    assert items["temporary"]["saving_bytes"] == 4000
    assert items["cold"]["saving_bytes"] == len(b"year,value\n" * 2000)
    used = fs.du("/")
    assert used > 0.8 * (8 << 20)
    assert items["quota"]["saving_bytes"] == int(used - 0.8 * (8 << 20)) + 1
    for item in result["recommendations"]:
        assert item["title"] and item["detail"] and item["action"]


def test_no_compress_item_when_the_stack_compresses(tmp_path):
    root = str(tmp_path / "store")
    fs = Compress(fs=LocalBackend(root), cache_dir=str(tmp_path / "cache"))
    now = time.time()
    fill(fs, root, now)
    result = recommend(fs, now=now)
    kinds = [i["kind"] for i in result["recommendations"]]
    assert "compress" not in kinds and "quota" not in kinds
    assert kinds[0] == "duplicates"  # the random duplicates store their full size
    dup = result["recommendations"][0]
    stored = sum(os.path.getsize(os.path.join(root, p)) for p in ("b/dup.bin", "c/dup.bin"))
    assert dup["saving_bytes"] == stored


def test_cli_recommend_json_and_text(env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[stacks.plain]\nlayers = ["validate", "compress"]\n'
                      f'backend = {{ type = "local", root = "{tmp_path / "plain"}" }}\n')
    fs = open_stack("plain", str(config))
    now = time.time()
    fill(fs, str(tmp_path / "plain"), now)
    base = ["--config", str(config), "recommend"]
    result = CliRunner().invoke(cli, base + ["plain", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    items = json.loads(result.output)["recommendations"]
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1)) and items
    assert items[0]["kind"] == "duplicates"
    text = CliRunner().invoke(cli, base + ["plain:/a"], catch_exceptions=False)
    assert text.exit_code == 0 and "nothing to recommend" in text.output
    bad = CliRunner().invoke(cli, base + ["--cold-days", "-1"])
    assert bad.exit_code == 1 and "aiofs: error [INVALID_ARGUMENT]:" in bad.output
