"""Named stacks, config files and the aiofs:// protocol (fsspec entry point)."""

import os
import pickle
import subprocess
import sys
import textwrap

import fsspec
import pytest

import aiofs
from aiofs.backends import LocalBackend
from aiofs.config import load_config
from aiofs.errors import ConfigError, InvalidArgument
from aiofs.stack import AiofsFileSystem, forget_open_stacks, open_stack, split_target


@pytest.fixture
def storage(isolated_storage):
    return isolated_storage


@pytest.fixture
def config_file(tmp_path, storage):
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(f"""
        [stacks.work]
        layers = [{{ type = "layer" }}, "layer"]
        backend = {{ type = "local", root = "{tmp_path / 'work'}" }}

        [stacks.scratch]
        backend = {{ type = "fsspec", protocol = "memory" }}
    """))
    return path


def test_default_stack_needs_no_config(storage):
    fs = open_stack("default")
    assert repr(fs) == f"Validate(Quota(Versioning(Dedup(Compress(Local('{storage}'))))))"
    assert fs.find_layer(LocalBackend).root == str(storage)
    assert open_stack("aiofs://default") is fs  # one instance per process
    assert aiofs.open_stack() is fs


def test_named_stacks_from_config(config_file, tmp_path):
    work = open_stack("work", str(config_file))
    assert repr(work) == f"Layer(Layer(Local('{tmp_path / 'work'}')))"
    work.pipe_file("a.txt", b"work data")
    assert (tmp_path / "work" / "a.txt").read_bytes() == b"work data"
    scratch = open_stack("aiofs://scratch", str(config_file))
    assert type(scratch).__name__ == "MemoryFileSystem"


@pytest.mark.parametrize("text, message", [
    ("[stacks.x]\nbackend = { type = 'nope' }", "unknown backend type 'nope'"),
    ("[stacks.x]\nlayers = ['nope']\nbackend = 'local'", "unknown layer type 'nope'"),
    ("[stacks.x]\nbackend = 'local'\ncolour = 1", "unknown keys ['colour']"),
    ("[settings]\nlocal_storage = 1", "unknown settings ['local_storage']"),
    ("[stacks.x\n", "not valid TOML"),
    ("[stacks.x]\nlayers = 'layer'\nbackend = 'local'", "'layers' must be a list"),
    ("[stacks.x]\nbackend = { type = 'local' }", "backend 'local'"),
])
def test_config_mistakes_are_config_errors(tmp_path, storage, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        open_stack("x", str(path))
    assert caught.value.code == "CONFIG_ERROR"


def test_unknown_stack_names_the_known_ones(config_file):
    with pytest.raises(ConfigError, match="known stacks: default, scratch, work"):
        open_stack("nope", str(config_file))


def test_environment_overrides_file_settings(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text(f"[settings]\nlocal_storage_path = '{tmp_path / 'from-file'}'\nmax_local_storage_gb = 2\n")
    monkeypatch.delenv("LOCAL_STORAGE_PATH", raising=False)
    monkeypatch.setenv("MAX_LOCAL_STORAGE_GB", "7.5")
    config = load_config(str(path))
    assert config.settings["local_storage_path"] == str(tmp_path / "from-file")
    assert config.settings["max_local_storage_gb"] == 7.5
    monkeypatch.setenv("LOCAL_STORAGE_PATH", str(tmp_path / "from-env"))
    assert load_config(str(path)).stacks["default"].backend["root"] == str(tmp_path / "from-env")
    monkeypatch.setenv("MAX_LOCAL_STORAGE_GB", "lots")
    with pytest.raises(ConfigError, match="MAX_LOCAL_STORAGE_GB"):
        load_config(str(path))


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "absent.toml"))


def test_aiofs_urls_read_write_list(storage):
    with fsspec.open("aiofs://default/notes/a.txt", "wb") as f:
        f.write(b"hello")
    assert open_stack("default").cat_file("notes/a.txt") == b"hello"
    fs = fsspec.filesystem("aiofs")
    assert isinstance(fs, AiofsFileSystem)
    assert fs.ls("aiofs://", detail=False) == ["default"]
    assert fs.ls("aiofs://default/notes", detail=False) == ["default/notes/a.txt"]
    assert fs.info("aiofs://default/notes/a.txt")["size"] == 5
    assert fs.cat_file("aiofs://default/notes/a.txt", start=-3) == b"llo"
    assert fs.find("aiofs://default") == ["default/notes/a.txt"]
    fs.cp_file("aiofs://default/notes/a.txt", "aiofs://default/notes/b.txt")
    fs.mv("aiofs://default/notes/b.txt", "aiofs://default/c.txt")
    assert sorted(fs.find("aiofs://default")) == ["default/c.txt", "default/notes/a.txt"]
    fs.rm("aiofs://default/notes", recursive=True)
    assert fs.find("aiofs://default") == ["default/c.txt"]
    with pytest.raises(FileNotFoundError, match="no stack named 'nope'"):
        fs.cat_file("aiofs://nope/x")


def test_cross_stack_copy_through_urls(config_file):
    fs = fsspec.filesystem("aiofs", config=str(config_file))
    fs.pipe_file("aiofs://work/src.bin", b"x" * 10_000)
    fs.cp_file("aiofs://work/src.bin", "aiofs://scratch/dst.bin")
    assert fs.cat_file("aiofs://scratch/dst.bin") == b"x" * 10_000
    fs.rm("aiofs://scratch/dst.bin")


def test_aiofs_filesystem_pickles(storage):
    fs = fsspec.filesystem("aiofs")
    fs.pipe_file("default/p.txt", b"pickled")
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.cat_file("default/p.txt") == b"pickled"


def test_pandas_reads_aiofs_url_in_a_fresh_process(storage):
    """The fsspec.specs entry point registers aiofs:// for any process after install."""
    open_stack("default").pipe_file("a.csv", b"x,y\n1,2\n3,4\n")
    code = "import pandas; print(pandas.read_csv('aiofs://default/a.csv')['y'].sum())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "6"


def test_split_target(config_file):
    assert split_target("work:/a/b", str(config_file)) == ("work", "a/b")
    assert split_target("work:", str(config_file)) == ("work", "")
    assert split_target("aiofs://scratch/x", str(config_file)) == ("scratch", "x")
    assert split_target("./local/file", str(config_file)) is None
    assert split_target("unknown:/x", str(config_file)) is None


def test_open_stack_rejects_a_path_url(storage):
    with pytest.raises(InvalidArgument):
        open_stack("aiofs://default/some/path")


def test_chained_urls_and_protocols_do_not_clobber():
    from fsspec.registry import get_filesystem_class, known_implementations

    import aiofs.layer
    import aiofs.backends.local

    assert get_filesystem_class("aiofs") is AiofsFileSystem
    assert get_filesystem_class("aiofs-layer") is aiofs.layer.Layer
    assert get_filesystem_class("aiofs-local") is aiofs.backends.local.LocalBackend
    from aiofs.backends.drive import DriveBackend
    assert get_filesystem_class("aiofs-drive") is DriveBackend
    # fsspec's own table (before entry points) must not already own our names ("gdrive" is
    # another package's: ours is "aiofs-drive")
    builtin = {name for name, spec in known_implementations.items() if "aiofs" not in spec["class"]}
    assert not {"aiofs", "aiofs-layer", "aiofs-local", "aiofs-drive"} & builtin
    fsspec.filesystem("memory").pipe("/chain-test/a.txt", b"chained")
    with fsspec.open("aiofs-layer::memory://chain-test/a.txt", "rb") as f:
        assert f.read() == b"chained"
    of = fsspec.open("aiofs-layer::memory://chain-test/a.txt")
    assert repr(of.fs) == "Layer(Memory())"
    fsspec.filesystem("memory").rm("/chain-test", recursive=True)
