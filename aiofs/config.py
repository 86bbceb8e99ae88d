"""Configuration: a TOML file of named stacks plus the seed's environment variables.

Where the file is: ``--config PATH`` (the ``config=`` argument), else ``$AIOFS_CONFIG``, else
``config.toml`` in the user config directory (``~/.config/aiofs/config.toml`` on Linux).
A missing file is fine: the built-in ``default`` stack needs no configuration at all.

File format (every table optional)::

    [settings]
    local_storage_path = "~/aiofs/storage"   # root of the default stack
    max_local_storage_gb = 5

    [stacks.work]                            # a named stack: layers top to bottom
    layers = [{ type = "layer" }]
    backend = { type = "local", root = "~/work-store" }

    [stacks.scratch]
    backend = { type = "fsspec", protocol = "memory" }

    [cleanup]                                # what `aiofs cleanup` looks for (all optional)
    temp_patterns = ["*.tmp", "~$*"]         # replaces the built-in temporary-file patterns
    temp_min_age_hours = 24                  # temporary files untouched this long
    older_than_days = 90                     # files older than this ...
    folders = ["/Downloads", "/scratch"]     # ... in these folders

Environment variables override ``[settings]``: ``LOCAL_STORAGE_PATH``,
``MAX_LOCAL_STORAGE_GB``, ``DEFAULT_CDN``, ``GOOGLE_CLIENT_ID``, ``GOOGLE_CLIENT_SECRET``,
``GOOGLE_REDIRECT_URI``, ``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_ZONE_ID``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``VERCEL_TOKEN``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from aiofs.errors import ConfigError

DEFAULT_STACK = "default"
STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# setting name -> (environment variable, type)
SETTINGS: dict[str, tuple[str, type]] = {
    "local_storage_path": ("LOCAL_STORAGE_PATH", str),
    "max_local_storage_gb": ("MAX_LOCAL_STORAGE_GB", float),
    "default_cdn": ("DEFAULT_CDN", str),
    "google_client_id": ("GOOGLE_CLIENT_ID", str),
    "google_client_secret": ("GOOGLE_CLIENT_SECRET", str),
    "google_redirect_uri": ("GOOGLE_REDIRECT_URI", str),
    "cloudflare_api_token": ("CLOUDFLARE_API_TOKEN", str),
    "cloudflare_zone_id": ("CLOUDFLARE_ZONE_ID", str),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID", str),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY", str),
    "vercel_token": ("VERCEL_TOKEN", str),
}

_STACK_KEYS = {"layers", "backend", "description"}

# [cleanup] key -> (check, what it must be); read by aiofs.optimize.cleanup
CLEANUP_KEYS: dict[str, tuple] = {
    "temp_patterns": (lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
                      "a list of glob patterns"),
    "temp_min_age_hours": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                           "a non-negative number"),
    "older_than_days": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                        "a non-negative number"),
    "folders": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                "a list of folder paths"),
}


def default_config_path() -> Path:
    """Where the config file is looked for when none is given."""
    env = os.environ.get("AIOFS_CONFIG")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_config_path("aiofs") / "config.toml"


def default_settings() -> dict:
    """Settings before the file and the environment are applied."""
    return {
        "local_storage_path": str(platformdirs.user_data_path("aiofs") / "storage"),
        "max_local_storage_gb": 5.0,
        "default_cdn": "",
    }


@dataclass
class StackSpec:
    """A named stack: ``layers`` top to bottom (each ``{"type": ..., options...}``) over a
    ``backend`` (``{"type": "local" | "fsspec" | ..., options...}``)."""

    name: str
    backend: dict
    layers: list[dict] = field(default_factory=list)
    description: str = ""


@dataclass
class Config:
    """The loaded configuration: where it came from, settings, and named stacks."""

    path: Path | None
    settings: dict
    stacks: dict[str, StackSpec]
    cleanup: dict = field(default_factory=dict)  # the [cleanup] table, checked

    def stack(self, name: str) -> StackSpec:
        """The stack called ``name``; ``CONFIG_ERROR`` naming the known stacks otherwise."""
        try:
            return self.stacks[name]
        except KeyError:
            known = ", ".join(sorted(self.stacks)) or "none"
            raise ConfigError(f"unknown stack {name!r} (known stacks: {known})") from None


def builtin_default_stack(settings: dict) -> StackSpec:
    """The stack that works on a fresh machine with no account and no config file.

    Top to bottom: format validation, quota (100 MB per file, ``max_local_storage_gb``
    in total), versioning (30 versions per file), dedup (content-defined chunks in packs),
    zstd compression, local disk under ``local_storage_path``. It grows as layers land.
    """
    return StackSpec(
        name=DEFAULT_STACK,
        backend={"type": "local", "root": settings["local_storage_path"]},
        layers=[
            {"type": "validate"},
            {"type": "quota", "max_bytes": int(float(settings["max_local_storage_gb"]) * 2**30),
             "max_file_size": "100MB"},
            {"type": "versioning"},
            {"type": "dedup"},
            {"type": "compress"},
        ],
        description="built-in default: validation, quota, versioning, dedup, compression, local storage",
    )


def _apply_environment(settings: dict, source: str) -> None:
    for key, (env_name, kind) in SETTINGS.items():
        raw = os.environ.get(env_name)
        if raw is None or raw == "":
            continue
        try:
            settings[key] = kind(raw)
        except ValueError:
            raise ConfigError(f"environment variable {env_name}={raw!r} is not a {kind.__name__}") from None


def _parse_layer(entry, where: str) -> dict:
    if isinstance(entry, str):
        return {"type": entry}
    if isinstance(entry, dict) and isinstance(entry.get("type"), str):
        return dict(entry)
    raise ConfigError(f"{where}: each layer is a name or a table with a 'type' key, got {entry!r}")


def _parse_stack(name: str, table, source: str) -> StackSpec:
    where = f"{source}: [stacks.{name}]"
    if not STACK_NAME.match(name):
        raise ConfigError(f"{where}: stack names use letters, digits, '-', '_', '.'")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - _STACK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_STACK_KEYS)})")
    backend = table.get("backend")
    if isinstance(backend, str):
        backend = {"type": backend}
    if not isinstance(backend, dict) or not isinstance(backend.get("type"), str):
        raise ConfigError(f"{where}: 'backend' must be a table with a 'type' key")
    layers = table.get("layers", [])
    if not isinstance(layers, list):
        raise ConfigError(f"{where}: 'layers' must be a list, top to bottom")
    return StackSpec(
        name=name,
        backend=dict(backend),
        layers=[_parse_layer(entry, where) for entry in layers],
        description=str(table.get("description", "")),
    )


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read the config file (if any), apply the environment, add the built-in default."""
    explicit = path is not None
    config_path = Path(path).expanduser() if explicit else default_config_path()
    data: dict = {}
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    elif explicit:
        raise ConfigError(f"config file not found: {config_path}")
    source = str(config_path)
    unknown = set(data) - {"settings", "stacks", "cleanup"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)} "
                          f"(allowed: settings, stacks, cleanup)")

    settings = default_settings()
    file_settings = data.get("settings", {})
    if not isinstance(file_settings, dict):
        raise ConfigError(f"{source}: [settings] must be a table")
    unknown = set(file_settings) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"{source}: unknown settings {sorted(unknown)} (known: {sorted(SETTINGS)})")
    settings.update(file_settings)
    _apply_environment(settings, source)
    settings["local_storage_path"] = str(Path(settings["local_storage_path"]).expanduser())

    stacks = {DEFAULT_STACK: builtin_default_stack(settings)}
    file_stacks = data.get("stacks", {})
    if not isinstance(file_stacks, dict):
        raise ConfigError(f"{source}: [stacks] must be a table of named stacks")
    for name, table in file_stacks.items():
        stacks[name] = _parse_stack(name, table, source)  # a file may redefine 'default'
    cleanup = data.get("cleanup", {})
    if not isinstance(cleanup, dict):
        raise ConfigError(f"{source}: [cleanup] must be a table")
    for key, value in cleanup.items():
        if key not in CLEANUP_KEYS:
            raise ConfigError(f"{source}: [cleanup] unknown key {key!r} (known: {sorted(CLEANUP_KEYS)})")
        check, expected = CLEANUP_KEYS[key]
        if not check(value):
            raise ConfigError(f"{source}: [cleanup] {key} must be {expected}, got {value!r}")
    return Config(path=config_path if config_path.exists() else None, settings=settings, stacks=stacks,
                  cleanup=dict(cleanup))
