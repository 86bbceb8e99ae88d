"""The `aiofs` command: file operations on STACK:/path, --json listings, error codes."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from aiofs.cli import ProgressBar, cli
from aiofs.stack import open_stack


@pytest.fixture
def env(isolated_storage):
    return isolated_storage


def run(*args, ok=True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_put_ls_cat_get_roundtrip(env, tmp_path):
    local = tmp_path / "report.txt"
    local.write_bytes(b"line one\nline two\n")
    run("put", str(local), "default:/reports/")
    assert open_stack("default").cat_file("reports/report.txt") == local.read_bytes()
    assert run("ls", "default:/reports").output == "report.txt\n"
    listing = json.loads(run("ls", "--json", "default:/reports").output)
    assert listing == [{"name": "/reports/report.txt", "type": "file", "size": 18,
                        "mtime": listing[0]["mtime"]}]
    assert run("cat", "default:/reports/report.txt").output == "line one\nline two\n"
    assert run("cat", "--offset", "5", "--length", "3", "default:/reports/report.txt").output == "one"
    assert run("cat", "--offset", "-4", "default:/reports/report.txt").output == "two\n"
    out = tmp_path / "back.txt"
    run("get", "default:/reports/report.txt", str(out))
    assert out.read_bytes() == local.read_bytes()


def test_recursive_put_get_tree_du(env, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 100)
    (src / "sub" / "b.bin").write_bytes(b"b" * 50)
    run("put", "-r", str(src), "default:/copy")
    tree = json.loads(run("tree", "--json", "default:/copy").output)
    names = {c["name"]: c for c in tree["children"]}
    assert names["a.bin"]["size"] == 100
    assert names["sub"]["children"][0] == {"name": "b.bin", "type": "file", "size": 50}
    du = json.loads(run("du", "--json", "default:/copy").output)
    assert du["total"] == 150 and du["files"] == 2
    assert "150  total" in run("du", "-s", "default:/copy").output
    dest = tmp_path / "dest"
    run("get", "-r", "default:/copy", str(dest))
    assert (dest / "sub" / "b.bin").read_bytes() == b"b" * 50


def test_cp_mv_rm_info(env):
    default = open_stack("default")
    default.pipe_file("d/x.txt", b"xyz")
    run("cp", "default:/d/x.txt", "default:/d/y.txt")
    run("mv", "default:/d/y.txt", "default:/e/z.txt")
    assert default.cat_file("e/z.txt") == b"xyz"
    assert not (env / "d" / "y.txt").exists()
    info = json.loads(run("info", "--json", "default:/e/z.txt").output)
    assert info["size"] == 3 and info["type"] == "file" and info["name"] == "/e/z.txt"
    result = run("rm", "default:/e", ok=False)
    assert result.exit_code != 0 and (env / "e" / "z.txt").exists()
    run("rm", "-r", "default:/e")
    assert not (env / "e").exists()


def test_errors_name_their_code_and_change_nothing(env):
    env.mkdir(parents=True, exist_ok=True)
    before = sorted(os.listdir(env))
    for args, code in [
        (["cat", "default:/missing.txt"], "NOT_FOUND"),
        (["cat", "default:/../etc/passwd"], "INVALID_PATH"),
        (["mkdir", "default:/" + "n" * 300], "NAME_TOO_LONG"),
        (["ls", "not-a-stack:/x"], "INVALID_ARGUMENT"),
    ]:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert f"aiofs: error [{code}]:" in result.output, (args, result.output)
    assert sorted(os.listdir(env)) == before


def test_console_script_exit_status_and_message(env):
    """The installed `aiofs` command, as a user runs it."""
    exe = shutil.which("aiofs", path=os.path.dirname(sys.executable))
    assert exe, "the aiofs console script is installed next to the interpreter"
    result = subprocess.run([exe, "cat", "default:/nope.txt"], capture_output=True, text=True,
                            env=dict(os.environ), timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("aiofs: error [NOT_FOUND]: ")
    assert "Traceback" not in result.stderr
    ok = subprocess.run([exe, "stacks", "--json"], capture_output=True, text=True,
                        env=dict(os.environ), timeout=60)
    assert ok.returncode == 0
    assert json.loads(ok.stdout)[0]["name"] == "default"


def test_demo_runs_on_the_default_stack(env):
    output = run("demo").output
    assert "done:" in output
    assert (env / "aiofs-demo" / "docs" / "README.md").exists()


def test_progress_bar_appears_only_after_a_moment():
    bar = ProgressBar("big.bin", enabled=True)
    bar.set_size(100)
    bar.relative_update(10)
    assert bar._progress is None  # fast transfers show nothing
    bar.started = time.monotonic() - 5
    bar.relative_update(10)
    assert bar._progress is not None
    assert bar._progress.tasks[0].completed == 20
    bar.close()
