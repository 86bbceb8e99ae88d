"""Build stacks from configuration, and the ``aiofs://STACK/path`` fsspec protocol.

This module (with :mod:`aiofs.config`) is the only one that knows every layer and
backend: ``LAYER_TYPES`` and ``BACKEND_TYPES`` map the names used in the config file to
classes, imported lazily so a stack never pays for what it does not use.

``open_stack("work")`` or ``open_stack("aiofs://work")`` returns the stack's top
filesystem. One process keeps one instance per stack definition, so every
``fsspec.open("aiofs://work/...")`` shares the same layers (their caches, journals, locks).
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from aiofs.config import DEFAULT_STACK, SETTINGS, Config, StackSpec, default_config_path, load_config
from aiofs.errors import ConfigError, InvalidArgument, NotFound, ReadOnly

PROTOCOL = "aiofs"

# Config name -> "module:Class". Layers land here as their issues do.
LAYER_TYPES: dict[str, str] = {
    "layer": "aiofs.layer:Layer",
    "compress": "aiofs.layers.compress:Compress",
    "dedup": "aiofs.layers.dedup:Dedup",
    "encrypt": "aiofs.layers.encrypt:Encrypt",
    "offline": "aiofs.layers.offline:Offline",
    "quota": "aiofs.layers.quota:Quota",
    "validate": "aiofs.layers.validate:Validate",
    "versioning": "aiofs.layers.versioning:Versioning",
}

BACKEND_TYPES: dict[str, str] = {
    "local": "aiofs.backends.local:LocalBackend",
    "drive": "aiofs.backends.drive:DriveBackend",
}

_open_stacks: dict[tuple[str, str], AbstractFileSystem] = {}
_open_stacks_lock = threading.Lock()


def _import(dotted: str) -> type:
    module_name, _, class_name = dotted.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def _options(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "type"}


def build_backend(spec: dict) -> AbstractFileSystem:
    """The bottom filesystem of a stack from its ``backend`` table."""
    kind = spec["type"]
    if kind == "fsspec":  # any registered fsspec filesystem: {type="fsspec", protocol="s3", ...}
        options = _options(spec)
        protocol = options.pop("protocol", None)
        if not protocol:
            raise ConfigError("an fsspec backend needs a 'protocol'")
        return fsspec.filesystem(protocol, **options)
    if kind not in BACKEND_TYPES:
        known = ", ".join(sorted([*BACKEND_TYPES, "fsspec"]))
        raise ConfigError(f"unknown backend type {kind!r} (known: {known})")
    try:
        return _import(BACKEND_TYPES[kind])(**_options(spec))
    except TypeError as exc:
        raise ConfigError(f"backend {kind!r}: {exc}") from None


def build_stack(spec: StackSpec) -> AbstractFileSystem:
    """Build a stack: the backend, then each layer from the bottom up."""
    for entry in spec.layers:  # check every name before anything is built or created
        if entry["type"] not in LAYER_TYPES:
            known = ", ".join(sorted(LAYER_TYPES))
            raise ConfigError(f"stack {spec.name!r}: unknown layer type {entry['type']!r} (known: {known})")
    fs = build_backend(spec.backend)
    for entry in reversed(spec.layers):
        kind = entry["type"]
        try:
            fs = _import(LAYER_TYPES[kind])(fs=fs, **_options(entry))
        except TypeError as exc:
            raise ConfigError(f"stack {spec.name!r}, layer {kind!r}: {exc}") from None
    return fs


def stack_name_from_url(name_or_url: str) -> str:
    """``"work"`` and ``"aiofs://work"`` both name the stack ``work``."""
    if name_or_url.startswith(f"{PROTOCOL}://"):
        rest = name_or_url[len(PROTOCOL) + 3 :].strip("/")
        if "/" in rest:
            raise InvalidArgument(f"{name_or_url!r} names a path; open_stack takes aiofs://STACK")
        return rest or DEFAULT_STACK
    return name_or_url or DEFAULT_STACK


def open_stack(name_or_url: str = DEFAULT_STACK, config: str | Config | None = None) -> AbstractFileSystem:
    """The top filesystem of a named stack (``"default"`` works with no config at all).

    ``config`` is a path to a TOML file or a loaded :class:`~aiofs.config.Config`; by
    default the user's config file, if any. The instance is shared within the process.
    """
    loaded = config if isinstance(config, Config) else load_config(config)
    spec = loaded.stack(stack_name_from_url(name_or_url))
    key = (spec.name, repr(spec))
    with _open_stacks_lock:
        fs = _open_stacks.get(key)
        if fs is None:
            fs = _open_stacks[key] = build_stack(spec)
        return fs


def forget_open_stacks() -> None:
    """Drop this process's shared stack instances (tests; after editing the config)."""
    with _open_stacks_lock:
        _open_stacks.clear()


def split_target(argument: str, config: str | Config | None = None) -> tuple[str, str] | None:
    """Split a CLI argument ``STACK:/path`` or ``aiofs://STACK/path`` into (stack, path).

    Returns ``None`` for anything else (a local path). ``STACK:`` alone means the root.
    """
    if argument.startswith(f"{PROTOCOL}://"):
        rest = argument[len(PROTOCOL) + 3 :]
        name, _, path = rest.partition("/")
        return name or DEFAULT_STACK, path
    name, sep, path = argument.partition(":")
    if not sep or "/" in name or not name:
        return None
    loaded = config if isinstance(config, Config) else load_config(config)
    if name not in loaded.stacks:
        return None
    return name, path.lstrip("/")


class AiofsFileSystem(AbstractFileSystem):
    """The ``aiofs://`` protocol: ``aiofs://STACK/path`` reaches ``path`` in stack ``STACK``.

    Registered through the ``fsspec.specs`` entry point, so after installation
    ``pandas.read_csv("aiofs://default/a.csv")`` works in any process. The root lists the
    configured stacks as directories. Storage option: ``config`` (path of a config file).
    """

    protocol = PROTOCOL
    root_marker = ""

    def __init__(self, config: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.config_path = config
        self._loaded: tuple[tuple, Config] | None = None

    def __repr__(self) -> str:
        return "Aiofs()" if self.config_path is None else f"Aiofs(config={self.config_path!r})"

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = fsspec.utils.stringify_path(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3 :]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{name}"

    # -- routing -------------------------------------------------------------------------

    def _config(self) -> Config:
        # Reload only when the file or the environment changed: a stat per call, no parse.
        path = Path(self.config_path).expanduser() if self.config_path else default_config_path()
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        stamp = (str(path), mtime, tuple(os.environ.get(env) for env, _ in SETTINGS.values()))
        if self._loaded is None or self._loaded[0] != stamp:
            self._loaded = (stamp, load_config(self.config_path))
        return self._loaded[1]

    def _route(self, path: str) -> tuple[str, AbstractFileSystem, str]:
        """(stack name, stack filesystem, path inside the stack) for an ``aiofs`` path."""
        path = self._strip_protocol(path)
        name, _, inner = path.partition("/")
        if not name:
            raise InvalidArgument("this operation needs a path inside a stack: aiofs://STACK/path")
        config = self._config()
        if name not in config.stacks:
            known = ", ".join(sorted(config.stacks))
            raise NotFound(f"no stack named {name!r} (known stacks: {known})", path)
        fs = open_stack(name, config)
        return name, fs, inner or fs.root_marker

    @staticmethod
    def _outer(name: str, inner: str) -> str:
        inner = inner.strip("/")
        return f"{name}/{inner}" if inner else name

    def _outer_entry(self, name: str, entry: dict) -> dict:
        return {**entry, "name": self._outer(name, entry["name"])}

    @staticmethod
    def _stack_entry(name: str) -> dict:
        return {"name": name, "size": 0, "type": "directory"}

    # -- listing and metadata ------------------------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if not path:
            names = sorted(self._config().stacks)
            return [self._stack_entry(n) for n in names] if detail else names
        name, fs, inner = self._route(path)
        entries = fs.ls(inner, detail=detail, **kwargs)
        if detail:
            return [self._outer_entry(name, e) for e in entries]
        return [self._outer(name, e) for e in entries]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        if not path:
            return {"name": "", "size": 0, "type": "directory"}
        name, fs, inner = self._route(path)
        if inner == fs.root_marker:
            return self._stack_entry(name)
        return self._outer_entry(name, fs.info(inner, **kwargs))

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        path = self._strip_protocol(path)
        if not path:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        name, fs, inner = self._route(path)
        found = fs.find(inner, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        result = {self._outer(name, key): self._outer_entry(name, entry) for key, entry in found.items()}
        return result if detail else sorted(result)

    def created(self, path):
        _, fs, inner = self._route(path)
        return fs.created(inner)

    def modified(self, path):
        _, fs, inner = self._route(path)
        return fs.modified(inner)

    def invalidate_cache(self, path=None):
        if path and self._strip_protocol(path):
            _, fs, inner = self._route(path)
            fs.invalidate_cache(inner)

    # -- data ------------------------------------------------------------------------------

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        _, fs, inner = self._route(path)
        return fs._open(inner, mode=mode, block_size=block_size, autocommit=autocommit,
                        cache_options=cache_options, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        _, fs, inner = self._route(path)
        return fs.cat_file(inner, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        _, fs, inner = self._route(path)
        return fs.pipe_file(inner, value, mode=mode, **kwargs)

    def pipe(self, path, value=None, **kwargs):
        # One bulk call per stack, so each stack can group-commit or run concurrently.
        if isinstance(path, str):
            path = {path: value}
        by_stack: dict[str, tuple[AbstractFileSystem, dict]] = {}
        for outer, data in path.items():
            name, fs, inner = self._route(outer)
            by_stack.setdefault(name, (fs, {}))[1][inner] = data
        for fs, batch in by_stack.values():
            fs.pipe(batch, **kwargs)

    def put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        _, fs, inner = self._route(rpath)
        return fs.put_file(lpath, inner, callback=callback, mode=mode, **kwargs)

    def get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK, outfile=None, **kwargs):
        _, fs, inner = self._route(rpath)
        return fs.get_file(inner, lpath, callback=callback, outfile=outfile, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        name1, fs1, inner1 = self._route(path1)
        name2, fs2, inner2 = self._route(path2)
        if name1 == name2:
            return fs1.cp_file(inner1, inner2, **kwargs)
        if fs1.isdir(inner1):
            return fs2.makedirs(inner2, exist_ok=True)
        with fs1.open(inner1, "rb") as src, fs2.open(inner2, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        if isinstance(path1, str) and isinstance(path2, str):
            name1, fs1, inner1 = self._route(path1)
            name2, _, inner2 = self._route(path2)
            if name1 == name2:
                return fs1.mv(inner1, inner2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def rm_file(self, path):
        _, fs, inner = self._route(path)
        return fs.rm_file(inner)

    def rm(self, path, recursive=False, maxdepth=None):
        for p in path if isinstance(path, list) else [path]:
            name, fs, inner = self._route(p)
            if inner == fs.root_marker and not recursive:
                raise ReadOnly(f"stack {name!r} cannot be removed; its files can (recursive=True)")
            fs.rm(inner, recursive=recursive, maxdepth=maxdepth)

    def mkdir(self, path, create_parents=True, **kwargs):
        _, fs, inner = self._route(path)
        return fs.mkdir(inner, create_parents=create_parents, **kwargs)

    def makedirs(self, path, exist_ok=False):
        _, fs, inner = self._route(path)
        if inner == fs.root_marker:
            return None
        return fs.makedirs(inner, exist_ok=exist_ok)

    def rmdir(self, path):
        _, fs, inner = self._route(path)
        return fs.rmdir(inner)
