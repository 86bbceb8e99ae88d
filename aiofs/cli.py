"""The ``aiofs`` command: file operations on ``STACK:/path`` arguments.

Any argument of the form ``STACK:/path`` (or ``aiofs://STACK/path``) names a path in a
configured stack; anything else is a local path. Listing commands take ``--json``. Failures
exit non-zero with ``aiofs: error [CODE]: message`` on stderr, CODE from
:mod:`aiofs.errors`.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import posixpath
import sys
import time

import click
import fsspec
from fsspec.callbacks import Callback

from aiofs.config import load_config
from aiofs.errors import AiofsError, AlreadyExists, BackendUnavailable, InvalidArgument, code_for
from aiofs.stack import open_stack, split_target

# A transfer shows a progress bar once it has run this long (seconds) on a terminal.
PROGRESS_AFTER = 0.5


class Target:
    """A resolved command-line argument: a path in a stack, or a local path."""

    def __init__(self, argument: str, config_path: str | None, local_only: bool = False):
        self.argument = argument
        split = None if local_only else split_target(argument, config_path)
        if split is None:
            self.stack = None
            self.fs = fsspec.filesystem("file")
            self.path = os.path.abspath(argument)
        else:
            self.stack, inner = split
            self.fs = open_stack(self.stack, config_path)
            self.path = inner.strip("/") or self.fs.root_marker

    @property
    def names_directory(self) -> bool:
        """A trailing slash (``default:/up/``) means "into this directory"."""
        return self.argument.endswith("/")

    @property
    def is_local(self) -> bool:
        return self.stack is None

    def child(self, name: str) -> str:
        return posixpath.join(self.path, name) if self.path else name

    def display(self, path: str) -> str:
        """How a path of this target is shown: ``/a/b`` inside a stack."""
        if self.is_local:
            return path
        return "/" + path.lstrip("/")


class ProgressBar(Callback):
    """An fsspec callback that shows a rich progress bar once a transfer takes a moment."""

    def __init__(self, description: str, enabled: bool):
        super().__init__()
        self.description = description
        self.enabled = enabled
        self.started = time.monotonic()
        self._progress = None
        self._task = None

    def call(self, *args, **kwargs):
        if not self.enabled:
            return
        if self._progress is None:
            if time.monotonic() - self.started < PROGRESS_AFTER:
                return
            from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(),
                console=_stderr_console(), transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.size)
        self._progress.update(self._task, completed=self.value, total=self.size)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@functools.cache
def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _progress_enabled() -> bool:
    return sys.stderr.isatty()


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _mtime(entry: dict) -> str | None:
    value = entry.get("mtime", entry.get("LastModified", entry.get("created")))
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc).isoformat()
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return None


def _entry_json(target: Target, entry: dict) -> dict:
    return {
        "name": target.display(entry["name"]),
        "type": entry.get("type", "file"),
        "size": entry.get("size", 0),
        "mtime": _mtime(entry),
    }


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _error_message(exc: BaseException) -> str:
    """A one-line message without Python's ``[Errno N]`` noise."""
    if isinstance(exc, AiofsError):
        return exc.detail
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


class AiofsGroup(click.Group):
    """Turns any exception into ``aiofs: error [CODE]: message`` and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # `aiofs cat ... | head`
            sys.stderr.close()
            raise SystemExit(0)
        except Exception as exc:
            code = code_for(exc)
            click.echo(f"aiofs: error [{code}]: {_error_message(exc)}", err=True)
            raise SystemExit(1)


@click.group(cls=AiofsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: $AIOFS_CONFIG or the user config dir).")
@click.version_option(package_name="aiofs")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """aiofs: a pluggable virtual filesystem. Paths: STACK:/path (e.g. default:/notes/a.txt)."""
    ctx.obj = config_path


def _target(ctx: click.Context, argument: str, must_be_stack: bool = True) -> Target:
    target = Target(argument, ctx.obj)
    if must_be_stack and target.is_local:
        raise InvalidArgument(
            f"{argument!r} is not STACK:/path (known stacks: {', '.join(sorted(load_config(ctx.obj).stacks))})"
        )
    return target


@cli.command()
@click.argument("path", default="default:/")
@click.option("-l", "long_format", is_flag=True, help="Long listing: type, size, mtime.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ls(ctx, path, long_format, as_json):
    """List a directory."""
    target = _target(ctx, path)
    entries = sorted(target.fs.ls(target.path, detail=True), key=lambda e: e["name"])
    if as_json:
        _echo_json([_entry_json(target, e) for e in entries])
        return
    for entry in entries:
        name = posixpath.basename(entry["name"].rstrip("/")) + ("/" if entry["type"] == "directory" else "")
        if long_format:
            click.echo(f"{entry['type'][:4]:4} {entry.get('size', 0):>14} {_mtime(entry) or '-':32} {name}")
        else:
            click.echo(name)


@cli.command()
@click.argument("path", default="default:/")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (nested).")
@click.pass_context
def tree(ctx, path, as_json):
    """Show a directory tree."""
    target = _target(ctx, path)
    found = target.fs.find(target.path, withdirs=True, detail=True)
    base = target.path.strip("/")
    nodes: dict[str, dict] = {}
    root = {"name": target.display(target.path), "type": "directory", "children": []}
    for name in sorted(found):
        entry = found[name]
        rel = name.strip("/")[len(base):].strip("/") if base else name.strip("/")
        if not rel:
            continue
        node = {"name": posixpath.basename(rel), "type": entry["type"], "size": entry.get("size", 0)}
        if entry["type"] == "directory":
            node["children"] = []
        nodes[rel] = node
        parent = nodes.get(posixpath.dirname(rel), root)
        parent.setdefault("children", []).append(node)
    if as_json:
        _echo_json(root)
        return
    click.echo(root["name"])

    def show(children, prefix):
        for index, child in enumerate(children):
            last = index == len(children) - 1
            label = child["name"] + ("/" if child["type"] == "directory" else f"  ({_human(child['size'])})")
            click.echo(f"{prefix}{'└── ' if last else '├── '}{label}")
            show(child.get("children", []), prefix + ("    " if last else "│   "))

    show(root["children"], "")


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def info(ctx, path, as_json):
    """Show metadata of a file or directory."""
    target = _target(ctx, path)
    entry = dict(target.fs.info(target.path))
    entry["name"] = target.display(entry["name"])
    if as_json:
        _echo_json(entry)
        return
    for key, value in entry.items():
        click.echo(f"{key}: {value}")


@cli.command()
@click.argument("path", default="default:/")
@click.option("-s", "summary", is_flag=True, help="Only the total.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def du(ctx, path, summary, as_json):
    """Disk usage (logical bytes) of a file or directory."""
    target = _target(ctx, path)
    sizes = target.fs.du(target.path, total=False, withdirs=False)
    total = sum(sizes.values())
    if as_json:
        result = {"path": target.display(target.path), "total": total, "files": len(sizes)}
        if not summary:
            result["entries"] = {target.display(k): v for k, v in sorted(sizes.items())}
        _echo_json(result)
        return
    if not summary:
        for name, size in sorted(sizes.items()):
            click.echo(f"{size:>14}  {target.display(name)}")
    click.echo(f"{total:>14}  total ({_human(total)} in {len(sizes)} files)")


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--offset", type=int, default=None, help="First byte (negative: from the end).")
@click.option("--length", type=int, default=None, help="Number of bytes.")
@click.pass_context
def cat(ctx, paths, offset, length):
    """Write file contents to stdout (optionally a byte range)."""
    out = sys.stdout.buffer
    for argument in paths:
        target = _target(ctx, argument)
        if offset is None and length is None:
            with target.fs.open(target.path, "rb") as f:
                while block := f.read(1 << 20):
                    out.write(block)
        else:
            start = offset or 0
            end = None if length is None else start + length
            if start < 0 and end is not None and end >= 0:
                end = None
            out.write(target.fs.cat_file(target.path, start=start, end=end))
    out.flush()


def _transfer(source: Target, dest: Target, recursive: bool, move: bool = False) -> int:
    """Copy (or move) between any two targets; returns the number of files."""
    src_fs, dst_fs = source.fs, dest.fs
    if not src_fs.exists(source.path):
        raise FileNotFoundError(f"no such file or directory: {source.argument}")
    is_dir = src_fs.isdir(source.path)
    if is_dir and not recursive:
        raise IsADirectoryError(f"{source.argument} is a directory (use -r)")
    if src_fs is dst_fs and not source.is_local:
        if move:
            src_fs.mv(source.path, dest.path, recursive=recursive)
        else:
            dest_path = dest.path
            if not is_dir and (dest.names_directory or dst_fs.isdir(dest_path)):
                dest_path = dest.child(posixpath.basename(source.path))
            src_fs.copy(source.path, dest_path, recursive=recursive)
        return 1
    if is_dir:
        pairs = []
        base = src_fs._strip_protocol(source.path).rstrip("/")
        for name in src_fs.find(source.path):
            rel = src_fs._strip_protocol(name)[len(base):].lstrip("/")
            pairs.append((name, dest.child(rel)))
    else:
        dest_path = dest.path
        if dest.names_directory or dst_fs.isdir(dest_path):
            dest_path = dest.child(posixpath.basename(source.path))
        pairs = [(source.path, dest_path)]
    enabled = _progress_enabled()
    for src_path, dst_path in pairs:
        bar = ProgressBar(posixpath.basename(src_path), enabled)
        try:
            _copy_one(src_fs, src_path, dst_fs, dst_path, bar)
        finally:
            bar.close()
    if move:
        src_fs.rm(source.path, recursive=is_dir)
    return len(pairs)


def _copy_one(src_fs, src_path, dst_fs, dst_path, callback: Callback) -> None:
    local = fsspec.implementations.local.LocalFileSystem
    if isinstance(src_fs, local) and not isinstance(dst_fs, local):
        dst_fs.put_file(src_path, dst_path, callback=callback)
    elif isinstance(dst_fs, local) and not isinstance(src_fs, local):
        os.makedirs(os.path.dirname(dst_path) or ".", exist_ok=True)
        src_fs.get_file(src_path, dst_path, callback=callback)
    else:
        callback.set_size(src_fs.size(src_path))
        with src_fs.open(src_path, "rb") as src, dst_fs.open(dst_path, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
                callback.relative_update(len(block))


@cli.command()
@click.argument("local", type=click.Path(exists=True))
@click.argument("dest")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory.")
@click.pass_context
def put(ctx, local, dest, recursive):
    """Upload a local file or directory into a stack."""
    _transfer(Target(local, ctx.obj, local_only=True), _target(ctx, dest), recursive)


@cli.command()
@click.argument("source")
@click.argument("local")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory.")
@click.pass_context
def get(ctx, source, local, recursive):
    """Download a file or directory from a stack."""
    _transfer(_target(ctx, source), Target(local, ctx.obj, local_only=True), recursive)


@cli.command()
@click.argument("source")
@click.argument("dest")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory.")
@click.pass_context
def cp(ctx, source, dest, recursive):
    """Copy between stacks and/or local paths."""
    src, dst = Target(source, ctx.obj), Target(dest, ctx.obj)
    if src.is_local and dst.is_local:
        raise InvalidArgument("at least one side must be STACK:/path")
    _transfer(src, dst, recursive)


@cli.command()
@click.argument("source")
@click.argument("dest")
@click.pass_context
def mv(ctx, source, dest):
    """Move or rename (a rename inside one stack; copy then delete across stacks)."""
    src, dst = _target(ctx, source), _target(ctx, dest)
    _transfer(src, dst, recursive=True, move=True)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Remove directories and their contents.")
@click.pass_context
def rm(ctx, paths, recursive):
    """Remove files (and directories with -r)."""
    for argument in paths:
        target = _target(ctx, argument)
        if not target.path:
            if not recursive:
                raise InvalidArgument("refusing to remove a stack root without -r")
        target.fs.rm(target.path, recursive=recursive)


@cli.command()
@click.argument("path")
@click.pass_context
def mkdir(ctx, path):
    """Create a directory (and its parents)."""
    target = _target(ctx, path)
    target.fs.makedirs(target.path, exist_ok=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def stacks(ctx, as_json):
    """List the configured stacks and what they are made of."""
    config = load_config(ctx.obj)
    rows = []
    for name, spec in sorted(config.stacks.items()):
        layers = " > ".join(layer["type"] for layer in spec.layers)
        backend = spec.backend.get("type")
        rows.append({"name": name, "layers": [l["type"] for l in spec.layers], "backend": spec.backend,
                     "description": spec.description})
        if not as_json:
            click.echo(f"{name}: {layers + ' > ' if layers else ''}{backend} {spec.backend}")
    if as_json:
        _echo_json(rows)


@cli.command()
@click.argument("stack", default="default")
@click.option("--recount", is_flag=True, help="Rebuild the usage from the stored files first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def quota(ctx, stack, recount, as_json):
    """Show a stack's storage quota: usage, limits and alerts."""
    from aiofs.layer import find_layer
    from aiofs.layers.quota import Quota

    name = stack.split(":", 1)[0] if ":" in stack and not stack.startswith("aiofs://") else stack
    fs = open_stack(name, ctx.obj)
    layer = find_layer(fs, Quota)
    if layer is None:
        raise InvalidArgument(f"stack {name!r} has no quota layer ({fs!r}); add "
                              f"{{ type = \"quota\" }} to its layers in the config file")
    usage = layer.recount() if recount else layer.usage()
    alerts = layer.alerts(limit=20)
    if as_json:
        _echo_json({"stack": name, "usage": usage, "statfs": layer.statfs(), "alerts": alerts})
        return

    def limit(value):
        return "unlimited" if value is None else _human(value)

    percent = f" ({usage['percent']:.1f}%)" if usage["percent"] is not None else ""
    click.echo(f"stack:          {name}  {fs!r}")
    click.echo(f"used:           {_human(usage['used'])}{percent} of {limit(usage['max_bytes'])}")
    click.echo(f"free:           {limit(usage['free'])}")
    if usage["reserved"]:
        click.echo(f"reserved:       {_human(usage['reserved'])} by writes in progress")
    files_limit = "" if usage["max_files"] is None else f" of {usage['max_files']}"
    click.echo(f"files:          {usage['files']}{files_limit}")
    click.echo(f"max file size:  {limit(usage['max_file_size'])}")
    crossed = ", ".join(f"{t:.0%}" for t in usage["thresholds_crossed"]) or "none"
    click.echo(f"alerts at:      {', '.join(f'{t:.0%}' for t in usage['thresholds'])} "
               f"(crossed: {crossed})")
    if usage["reconciled_at"]:
        when = datetime.datetime.fromtimestamp(usage["reconciled_at"], tz=datetime.timezone.utc)
        click.echo(f"last recount:   {when.isoformat(timespec='seconds')}")
    for alert in alerts:
        when = datetime.datetime.fromtimestamp(alert["crossed_at"], tz=datetime.timezone.utc)
        click.echo(f"  {when.isoformat(timespec='seconds')}  {alert['threshold']:.0%} crossed: "
                   f"{_human(alert['used'])} of {_human(alert['max_bytes'])}"
                   + (f" ({alert['path']})" if alert["path"] else ""))


def _working(description: str):
    """A spinner on a terminal for work without a byte count (nothing otherwise)."""
    import contextlib

    if not _progress_enabled():
        return contextlib.nullcontext()
    return _stderr_console().status(description)


def _dedup_layer(ctx, stack: str):
    """The Dedup layer of a stack, or a clear error naming the stack."""
    from aiofs.layer import find_layer
    from aiofs.layers.dedup import Dedup

    name = stack.split(":", 1)[0] if ":" in stack and not stack.startswith("aiofs://") else stack
    fs = open_stack(name, ctx.obj)
    layer = find_layer(fs, Dedup)
    if layer is None:
        raise InvalidArgument(f"stack {name!r} has no dedup layer ({fs!r}); add "
                              f"{{ type = \"dedup\" }} to its layers in the config file")
    return name, layer


@cli.command()
@click.argument("stack", default="default")
@click.option("--read-data", is_flag=True, help="Also read every pack and verify every chunk.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx, stack, read_data, as_json):
    """Verify a dedup store: manifests, index and packs (exit 1 on any problem)."""
    name, layer = _dedup_layer(ctx, stack)
    with _working("checking" + (" every chunk" if read_data else "")):
        report = layer.check(read_data=read_data)
    if as_json:
        _echo_json({"stack": name, **report})
    else:
        click.echo(f"stack {name}: {report['manifests']} manifests, {report['chunks']} chunks in "
                   f"{report['packs']} packs ({report['unreferenced_packs']} unreferenced: `aiofs gc` "
                   f"reclaims them)")
        for problem in report["problems"]:
            click.echo(f"  [{problem['code']}] {problem['path']}: {problem['detail']}")
        click.echo("no problems found" if report["ok"] else f"{len(report['problems'])} problem(s) found")
    if not report["ok"]:
        ctx.exit(1)


@cli.command()
@click.argument("stack", default="default")
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted or repacked.")
@click.option("--safety-window", type=float, default=3600.0, show_default=True,
              help="Seconds: packs younger than this are never touched (concurrent writers).")
@click.option("--repack-threshold", type=float, default=0.3, show_default=True,
              help="Repack a pack once this fraction of it is garbage.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc(ctx, stack, dry_run, safety_window, repack_threshold, as_json):
    """Reclaim space in a dedup store: delete unreferenced packs, repack and merge the rest."""
    if safety_window < 0 or not 0 < repack_threshold < 1:
        raise InvalidArgument("--safety-window must be >= 0 and --repack-threshold between 0 and 1")
    name, layer = _dedup_layer(ctx, stack)
    with _working("collecting garbage"):
        report = layer.gc(repack_threshold=repack_threshold, safety_window=safety_window,
                          dry_run=dry_run)
    if as_json:
        _echo_json({"stack": name, **report})
        return
    verb = "would free" if dry_run else "freed"
    click.echo(f"stack {name}: {report['packs_deleted']} packs deleted, {report['packs_repacked']} "
               f"repacked, {report.get('packs_merged', 0)} small packs merged; {verb} "
               f"{_human(report['bytes_freed'])}")


@cli.command()
@click.argument("stack")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-f", "--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS).")
@click.option("--allow-other", is_flag=True, help="Let other users see the mount (root, or "
              "user_allow_other in /etc/fuse.conf).")
@click.option("--attr-timeout", type=float, default=1.0, show_default=True,
              help="Seconds the kernel and the mount cache attributes and names.")
@click.option("--dir-cache-ttl", type=float, default=1.0, show_default=True,
              help="Seconds a directory listing is cached.")
@click.option("--read-ahead", type=int, default=8, show_default=True,
              help="Largest read-ahead window in MiB.")
@click.option("--no-kernel-cache", is_flag=True, help="Drop the page cache on every open.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where open files are buffered before reaching the stack (default: $TMPDIR).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Where a background mount writes its messages.")
@click.pass_context
def mount(ctx, stack, mountpoint, foreground, read_only, allow_other, attr_timeout,
          dir_cache_ttl, read_ahead, no_kernel_cache, cache_dir, log_file):
    """Mount STACK at MOUNTPOINT (FUSE). Runs in the background unless --foreground."""
    from aiofs.mount import is_mounted

    name = stack.split(":", 1)[0] if ":" in stack and not stack.startswith("aiofs://") else stack
    if is_mounted(mountpoint):
        raise InvalidArgument(f"{mountpoint!r} is already a mount point (aiofs unmount it first)")
    if not os.path.isdir(mountpoint):
        raise InvalidArgument(f"mount point {mountpoint!r} is not a directory")
    fs = open_stack(name, ctx.obj)  # fail here, in the foreground, on a bad stack
    if foreground:
        import logging

        from aiofs.mount.fuse import run_mount

        logging.basicConfig(level=logging.WARNING, format="aiofs mount: %(message)s")
        run_mount(fs, mountpoint, name=name, read_only=read_only, allow_other=allow_other,
                  attr_timeout=attr_timeout, entry_timeout=attr_timeout,
                  dir_cache_ttl=dir_cache_ttl, read_ahead=read_ahead << 20,
                  kernel_cache=not no_kernel_cache, temp_dir=cache_dir)
        return
    import subprocess
    import tempfile

    args = [sys.executable, "-m", "aiofs.cli"]
    if ctx.obj:
        args += ["--config", ctx.obj]
    args += ["mount", name, mountpoint, "--foreground", "--attr-timeout", str(attr_timeout),
             "--dir-cache-ttl", str(dir_cache_ttl), "--read-ahead", str(read_ahead)]
    args += ["--read-only"] * read_only + ["--allow-other"] * allow_other
    args += ["--no-kernel-cache"] * no_kernel_cache
    if cache_dir:
        args += ["--cache-dir", cache_dir]
    log = open(log_file, "ab") if log_file else tempfile.TemporaryFile()
    with log:
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
        deadline = time.monotonic() + 30
        while not is_mounted(mountpoint):
            if child.poll() is not None or time.monotonic() > deadline:
                if child.poll() is None:
                    child.terminate()
                log.seek(0)
                detail = log.read().decode(errors="replace").strip().splitlines()
                raise BackendUnavailable(f"mount failed: {detail[-1] if detail else 'no output'}",
                                         mountpoint)
            time.sleep(0.05)  # poll until the kernel shows the mount (bounded by the deadline)
    click.echo(f"mounted {name} at {mountpoint} (pid {child.pid}); unmount with: "
               f"aiofs unmount {mountpoint}")


@cli.command()
@click.argument("mountpoint")
@click.option("--lazy", is_flag=True, help="Detach now even if busy (fusermount3 -uz).")
def unmount(mountpoint, lazy):
    """Unmount an aiofs mount (also one whose daemon was killed)."""
    from aiofs.mount import unmount as do_unmount

    do_unmount(mountpoint, lazy=lazy)


# -- storage overview and optimization (issue 6; logic in aiofs/optimize/) --------------------


def _stack_and_path(ctx: click.Context, argument: str) -> tuple[str, str]:
    """``STACK``, ``STACK:/path`` or ``aiofs://STACK/path`` -> (stack, path); CONFIG_ERROR
    naming the known stacks for an unknown one."""
    config = load_config(ctx.obj)
    split = split_target(argument, config)
    if split is not None:
        return split
    name = argument.split(":", 1)[0] if ":" in argument else argument
    config.stack(name)  # raises CONFIG_ERROR: unknown stack (known stacks: ...)
    return name, ""


def _count_progress(description: str):
    """A counting progress bar on a terminal (``callback(done, total)``), else a no-op."""
    if not _progress_enabled():
        return None, lambda: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(), console=_stderr_console(),
                        transient=True)
    task = progress.add_task(description, total=None)
    started = time.monotonic()

    def update(done: int, total: int) -> None:
        if time.monotonic() - started < PROGRESS_AFTER:
            return
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    return update, progress.stop


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}%"


@cli.command()
@click.argument("stack", default="default")
@click.option("--history-days", type=click.IntRange(min=1), default=90, show_default=True,
              help="Days of usage history to show.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's shape).")
@click.pass_context
def overview(ctx, stack, history_days, as_json):
    """Storage usage by type, folder and age, with quotas and layers.

    STACK or STACK:/folder. Also records the day's usage for growth charts.
    """
    from aiofs.optimize.overview import overview as build

    name, path = _stack_and_path(ctx, stack)
    data = build(name, path=path, config=ctx.obj, history_days=history_days)
    if as_json:
        _echo_json(data)
        return
    local = data["local_storage"]
    stored = "" if local["stored_bytes"] is None else f", stored {_human(local['stored_bytes'])}"
    internal = "" if not local["internal_bytes"] else f" + {_human(local['internal_bytes'])} layer data"
    click.echo(f"stack:     {data['stack']}  {data['description']}")
    click.echo(f"path:      {data['path']}")
    click.echo(f"files:     {local['files']:,} in {local['folders']:,} folders, "
               f"{_human(local['logical_bytes'])}{stored}{internal}")
    if local["quota"]:
        q = local["quota"]
        limit = "unlimited" if q["limit"] is None else _human(q["limit"])
        click.echo(f"quota:     {_human(q['usage'])} of {limit} ({_pct(q['usage_percentage'])})")
    if local["disk"]:
        d = local["disk"]
        click.echo(f"disk:      {_human(d['free'])} free of {_human(d['total'])} ({local['root']})")
    drive = data["google_drive"]
    if drive["connected"]:
        q = drive["quota"]
        click.echo(f"drive:     {_human(q['usage'] or 0)} of "
                   f"{'unlimited' if q['limit'] is None else _human(q['limit'])} ({_pct(q['usage_percentage'])})")
    else:
        click.echo("drive:     not connected")
    total = max(local["logical_bytes"], 1)

    def table(title, rows, limit=None):
        click.echo(f"{title}:")
        shown = list(rows.items())
        for key, value in shown[:limit]:
            click.echo(f"  {key:<24} {_human(value['bytes']):>10} {100 * value['bytes'] / total:5.1f}%"
                       f"  {value['files']:>8,} files")
        if limit is not None and len(shown) > limit:
            rest = shown[limit:]
            click.echo(f"  {'(' + str(len(rest)) + ' more)':<24} "
                       f"{_human(sum(v['bytes'] for _, v in rest)):>10}")

    table("by type", data["usage_by_type"])
    table("by folder", data["usage_by_folder"], limit=10)
    table("by age", data["usage_by_age"])
    days = data["history"]["days"]
    growth = data["history"]["growth_bytes_per_day"]
    if growth is not None:
        click.echo(f"growth:    {'+' if growth >= 0 else '-'}{_human(abs(growth))}/day over "
                   f"{len(days)} recorded days (since {days[0]['date']})")
    else:
        click.echo(f"growth:    {len(days)} recorded day(s); more days give a trend")
    for layer_name, stats in data["layers"].items():
        shown = ", ".join(f"{k}={v}" for k, v in stats.items()
                          if isinstance(v, (int, float, str)) and not isinstance(v, bool))
        click.echo(f"layer {layer_name}: {shown}")


@cli.command()
@click.argument("target", default="default")
@click.option("--merge", is_flag=True, help="Make duplicates share storage where the stack can.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def dedupe(ctx, target, merge, as_json):
    """Find identical files; --merge makes them share storage.

    TARGET is STACK or STACK:/folder. Files are compared by content (blake3).
    """
    from aiofs.optimize.duplicates import find_duplicates, merge_duplicates

    name, path = _stack_and_path(ctx, target)
    progress, stop = _count_progress("hashing")
    try:
        report = find_duplicates(name, path, config=ctx.obj, progress=progress)
    finally:
        stop()
    merged = merge_duplicates(name, path, config=ctx.obj, report=report) if merge else None
    if as_json:
        _echo_json({**report, "merge": merged})
        return
    for group in report["groups"]:
        click.echo(f"{group['count']} copies of {_human(group['size'])} "
                   f"({_human(group['wasted_bytes'])} wasted)  blake3:{group['hash'][:16]}")
        for p in group["paths"]:
            click.echo(f"  {p}")
    for error in report["errors"]:
        click.echo(f"unreadable: {error['path']}: {error['error']}", err=True)
    click.echo(f"{len(report['groups'])} groups, {report['duplicate_files']} duplicate files, "
               f"{_human(report['wasted_bytes'])} in extra copies ({report['files_scanned']:,} files "
               f"scanned, {report['files_hashed']:,} hashed, {report['known_hashes']:,} hashes known)")
    if merged is not None:
        names = merged.get("duplicate_names")
        if names:  # a Drive backend: several files under one name
            for action in names["actions"]:
                click.echo(f"  duplicate name {action['path']}: {action['action']}"
                           + (f" -> {action['new_name']}" if action.get("new_name") else ""))
            click.echo(f"duplicate names merged: {names['merged']}")
        click.echo(f"merge ({merged['mode']}): {merged['detail']}")
        if merged["mode"] == "hardlink":
            click.echo(f"bytes saved: {_human(merged['bytes_saved'])} ({merged['bytes_saved']} B); "
                       f"{merged['already_shared_files']} already shared")
        for skip in merged["skipped"]:
            click.echo(f"  skipped {skip['path']}: {skip['reason']}")


@cli.command()
@click.argument("target", default="default")
@click.option("--older-than", "older_than", type=float, default=None, metavar="DAYS",
              help="Also remove files not modified for DAYS days in the --folder folders.")
@click.option("--folder", "folders", multiple=True, metavar="F",
              help="A folder for --older-than (repeatable; default: [cleanup] folders).")
@click.option("--temp-age", "temp_age", type=float, default=None, metavar="HOURS",
              help="Temporary files untouched this long (default: 24, or [cleanup]).")
@click.option("--no-temp", is_flag=True, help="Leave temporary files alone.")
@click.option("--apply", "do_apply", is_flag=True, help="Remove them (default: dry run).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def cleanup(ctx, target, older_than, folders, temp_age, no_temp, do_apply, as_json):
    """Remove temporary and old files (a dry run unless --apply).

    Temporary files, files older than --older-than days in the --folder folders, and what
    layers offer (versions beyond the rules). Defaults come from [cleanup] in the config.
    """
    from aiofs.optimize.cleanup import CleanupRules, cleanup as run_cleanup

    name, path = _stack_and_path(ctx, target)
    rules = CleanupRules.from_config(ctx.obj, older_than_days=older_than, folders=folders or None,
                                     temp_min_age_hours=temp_age, temp=not no_temp)
    result = run_cleanup(name, path, config=ctx.obj, rules=rules, apply=do_apply)
    if as_json:
        _echo_json(result)
        return
    for c in result["candidates"]:
        click.echo(f"{_human(c['size']):>10}  {c['path']}  ({c['reason']})")
    for folder in result["missing_folders"]:
        click.echo(f"note: folder {folder} does not exist in {name}", err=True)
    for note in result["notes"]:
        click.echo(f"note: {note}", err=True)
    if result["applied"] is None:
        click.echo(f"dry run: would free {_human(result['bytes'])} ({result['bytes']} B) in "
                   f"{result['files']} files; run again with --apply to remove them")
    else:
        applied = result["applied"]
        for skip in applied["skipped"]:
            click.echo(f"  skipped {skip['path']}: {skip['reason']}")
        click.echo(f"freed {_human(applied['bytes_freed'])} ({applied['bytes_freed']} B, stored "
                   f"{applied['stored_bytes_freed']} B) in {applied['files']} files"
                   + (f"; {len(applied['skipped'])} skipped" if applied["skipped"] else ""))


@cli.command()
@click.argument("target", default="default")
@click.option("--cold-days", type=float, default=180, show_default=True,
              help="Files not modified for this many days count as cold.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def recommend(ctx, target, cold_days, as_json):
    """Ranked ways to save space, each with its estimated saving."""
    from aiofs.optimize.recommend import recommend as build

    name, path = _stack_and_path(ctx, target)
    result = build(name, path, config=ctx.obj, cold_days=cold_days)
    if as_json:
        _echo_json(result)
        return
    if not result["recommendations"]:
        click.echo(f"nothing to recommend for {name} ({result['statistics']['files']:,} files)")
    for item in result["recommendations"]:
        click.echo(f"{item['rank']}. {item['title']}: saves ~{_human(item['saving_bytes'])} "
                   f"({item['saving_bytes']} B)")
        click.echo(f"   {item['detail']}")
        click.echo(f"   -> {item['action']}")


@cli.command()
@click.option("--stack", default="default", show_default=True, help="Stack to tour.")
@click.pass_context
def demo(ctx, stack):
    """A short tour of aiofs on a stack (writes under /aiofs-demo)."""
    from aiofs.demo import run_demo

    run_demo(stack, ctx.obj, echo=click.echo)


# -- Google account for Drive stacks (issue 9; logic in aiofs/backends/drive/auth.py) ---------


@cli.group()
def auth():
    """Link a Google account for Drive stacks (OAuth; token file in the user config dir)."""


@auth.command("login")
@click.option("--client-id", envvar="GOOGLE_CLIENT_ID", default=None,
              help="OAuth client id (default: $GOOGLE_CLIENT_ID).")
@click.option("--client-secret", envvar="GOOGLE_CLIENT_SECRET", default=None,
              help="OAuth client secret (default: $GOOGLE_CLIENT_SECRET).")
@click.option("--scope", type=click.Choice(["drive.file", "drive"]), default="drive.file",
              show_default=True, help="drive.file: only files aiofs created; drive: all files.")
@click.option("--no-browser", is_flag=True, help="Only print the URL to open.")
@click.option("--token-file", default=None, help="Where to keep the token (mode 0600).")
@click.option("--auth-uri", default=None, help="Authorization endpoint (tests: the emulator).")
@click.option("--token-uri", default=None, help="Token endpoint (tests: the emulator).")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the browser.")
def auth_login(client_id, client_secret, scope, no_browser, token_file, auth_uri, token_uri, timeout):
    """Link a Google account: opens the consent page, catches the redirect on 127.0.0.1."""
    from aiofs.backends.drive import auth as drive_auth

    def show(url):
        click.echo("Open this URL in a browser to link your Google account:")
        click.echo(url)
        sys.stdout.flush()

    info = drive_auth.loopback_login(
        client_id, client_secret, scopes=[scope], open_browser=not no_browser, url_callback=show,
        auth_uri=auth_uri or drive_auth.GOOGLE_AUTH_URI,
        token_uri=token_uri or drive_auth.GOOGLE_TOKEN_URI, timeout=timeout,
        store=drive_auth.TokenStore(token_file))
    path = drive_auth.TokenStore(token_file).path
    click.echo(f"linked ({' '.join(info['scopes'])}); token saved to {path}")


@auth.command("status")
@click.option("--token-file", default=None, help="Token file (default: the user config dir).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def auth_status(token_file, as_json):
    """Show whether a Google account is linked (scopes, expiry); exit 1 if not."""
    from aiofs.backends.drive.auth import token_status

    status = token_status(token_file)
    if as_json:
        _echo_json(status)
    elif not status["linked"]:
        click.echo(f"not linked (no token at {status['path']}); run `aiofs auth login`")
    else:
        state = "expired, refreshed on next use" if status["expired"] else "valid"
        click.echo(f"linked: {' '.join(status['scopes'])}")
        click.echo(f"token:  {status['path']} (mode {status['mode']}), access token {state}"
                   f"{'' if status['has_refresh_token'] else ', no refresh token'}")
    if not status["linked"]:
        raise SystemExit(1)


@auth.command("logout")
@click.option("--token-file", default=None, help="Token file (default: the user config dir).")
@click.option("--no-revoke", is_flag=True, help="Only delete the file, do not revoke at Google.")
def auth_logout(token_file, no_revoke):
    """Revoke the stored token and delete the token file."""
    from aiofs.backends.drive.auth import logout

    result = logout(token_file, revoke_tokens=not no_revoke)
    if result["removed"]:
        click.echo(f"unlinked: removed {result['path']}" + (" (token revoked)" if result["revoked"] else ""))
    else:
        click.echo(f"nothing to do: no token at {result['path']}")


# -- versions (issue 5; logic in aiofs/layers/versioning/) ---------------------------------------


def _versioning(ctx: click.Context, argument: str):
    """``(target, Versioning layer)`` of a ``STACK:/path`` argument, or a clear error."""
    from aiofs.layer import find_layer
    from aiofs.layers.versioning import Versioning

    target = _target(ctx, argument)
    layer = find_layer(target.fs, Versioning)
    if layer is None:
        raise InvalidArgument(f"stack {target.stack!r} keeps no versions ({target.fs!r}); add "
                              f"{{ type = \"versioning\" }} to its layers in the config file")
    return target, layer


def _version_arg(value: str):
    """A version on the command line: a number (``3``, ``v3``) or a version id."""
    return int(value) if value.isdigit() else value


def _version_line(v: dict) -> str:
    when = (v["timestamp"] or "")[:19].replace("T", " ")
    who = v["user"] or "-"
    text = f"v{v['version_number']:<4} {when}  {_human(v['size'] or 0):>10}  {who:<12} {v['change']:<9}"
    if v.get("autosave"):
        text += " autosave"
    if v["description"]:
        text += f"  {v['description']}"
    if v["pinned"]:
        text += "  [pinned]"
    return text


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def versions(ctx, path, as_json):
    """The timeline of a file's earlier versions, newest first."""
    target, layer = _versioning(ctx, path)
    listed = layer.versions(target.path)
    if as_json:
        _echo_json({"path": target.display(target.path), "versions": listed})
        return
    try:
        current = target.fs.info(target.path)
        click.echo(f"{target.display(target.path)}: current {_human(current.get('size', 0))}, "
                   f"{len(listed)} earlier version(s)")
    except FileNotFoundError:
        click.echo(f"{target.display(target.path)}: deleted, {len(listed)} version(s) "
                   f"(`aiofs restore` brings it back)")
    for v in listed:
        click.echo("  " + _version_line(v))


@cli.command()
@click.argument("path")
@click.argument("a")
@click.argument("b", default="current")
@click.option("--side-by-side", is_flag=True, help="Two columns instead of a unified diff.")
@click.option("--width", type=int, default=60, show_default=True, help="Column width.")
@click.option("--diff-image", type=click.Path(dir_okay=False), default=None,
              help="Images: write a PNG showing the changed pixels here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def diff(ctx, path, a, b, side_by_side, width, diff_image, as_json):
    """Compare two versions of a file (B defaults to the current content)."""
    from aiofs.layers.versioning.compare import side_by_side_text

    target, layer = _versioning(ctx, path)
    result = layer.compare(target.path, _version_arg(a), "current" if b == "current" else _version_arg(b),
                           diff_image=diff_image is not None)
    png = result["content"].pop("diff_image_png", None)
    if diff_image is not None and png is not None:
        with open(diff_image, "wb") as f:
            f.write(png)
    if as_json:
        _echo_json(result)
        return
    d, content = result["differences"], result["content"]
    names = [("current" if s["version_id"] == "current" else f"v{s['version_number']}")
             for s in (result["a"], result["b"])]
    seconds = d["time_between_seconds"]
    click.echo(f"{target.display(target.path)}: {names[0]} -> {names[1]}: "
               f"{d['size_change_bytes']:+d} bytes"
               + ("" if seconds is None else f", {seconds / 3600:.1f} h apart")
               + (", same content" if not d["hash_changed"] else "")
               + ("" if d["same_user"] else f", by {d['users']['a'] or '-'} -> {d['users']['b'] or '-'}"))
    kind = content["type"]
    if kind in ("text", "json"):
        if kind == "json" and content.get("layers"):
            layers = content["layers"]
            click.echo(f"layers: +{layers['added']} -{layers['removed']} changed {layers['changed']}")
        if kind == "json":
            for item in content["added"][:50]:
                click.echo(f"  added   {item['path']}")
            for item in content["removed"][:50]:
                click.echo(f"  removed {item['path']}")
            for item in content["changed"][:50]:
                click.echo(f"  changed {item['path']}: {item['old']!r} -> {item['new']!r}")
        if side_by_side:
            click.echo(side_by_side_text(content["side_by_side"], width))
        elif content["unified"]:
            click.echo(content["unified"])
    elif kind == "image":
        for side, name in (("a", names[0]), ("b", names[1])):
            i = content[side]
            click.echo(f"  {name}: {i['format']} {i['width']}x{i['height']} {i['mode']}")
        ratio = content["pixels_changed_ratio"]
        click.echo("  pixels changed: " + ("n/a (dimensions differ)" if ratio is None else f"{ratio:.2%}"))
    else:
        click.echo(f"  {content['bytes_changed']} bytes changed in {len(content['changed_ranges'])} range(s)")
        for start, end in content["changed_ranges"][:20]:
            click.echo(f"    [{start}, {end})")
    if content.get("note"):
        click.echo(f"note: {content['note']}", err=True)


@cli.command()
@click.argument("path")
@click.argument("version")
@click.option("-m", "--message", default=None, help="Description recorded for the revert.")
@click.pass_context
def revert(ctx, path, version, message):
    """Make VERSION the current content (the current content is kept as a version)."""
    target, layer = _versioning(ctx, path)
    wanted = layer.get_version(target.path, _version_arg(version))
    newest = max((v["version_number"] for v in layer.versions(target.path)), default=0)
    # copied over the file from the top of the stack, so every layer above sees the write
    # (a quota counts the bytes); the Versioning layer records it as a revert
    target.fs.cp_file(layer.version_path(target.path, wanted["version_id"]), target.path,
                      description=message)
    kept = [v for v in layer.versions(target.path) if v["version_number"] > newest]
    click.echo(f"{target.display(target.path)}: reverted to v{wanted['version_number']}"
               + (f"; previous content kept as v{kept[0]['version_number']}" if kept else ""))


@cli.command()
@click.argument("path")
@click.argument("version")
@click.option("--unpin", "do_unpin", is_flag=True, help="Remove the pin instead.")
@click.pass_context
def pin(ctx, path, version, do_unpin):
    """Keep VERSION beyond the version limits (--unpin lets it go again)."""
    target, layer = _versioning(ctx, path)
    method = layer.unpin if do_unpin else layer.pin
    v = method(target.path, _version_arg(version))
    click.echo(f"{target.display(target.path)}: v{v['version_number']} "
               + ("unpinned" if do_unpin else "pinned"))


@cli.command()
@click.argument("path")
@click.argument("version")
@click.pass_context
def unpin(ctx, path, version):
    """Let a pinned VERSION fall under the version limits again."""
    target, layer = _versioning(ctx, path)
    v = layer.unpin(target.path, _version_arg(version))
    click.echo(f"{target.display(target.path)}: v{v['version_number']} unpinned")


@cli.command()
@click.argument("path")
@click.option("--version", "version", default=None, help="Restore this version (default: the last).")
@click.option("--list", "list_only", is_flag=True, help="List restorable deleted files below PATH.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with --list).")
@click.pass_context
def restore(ctx, path, version, list_only, as_json):
    """Bring back a deleted file (or --list the deleted files below PATH)."""
    target, layer = _versioning(ctx, path)
    if list_only:
        gone = layer.deleted(target.path if target.path != target.fs.root_marker else "")
        if as_json:
            _echo_json({"deleted": gone})
            return
        for d in gone:
            click.echo(f"{(d['deleted_at'] or '')[:19].replace('T', ' ')}  {_human(d['size'] or 0):>10}  "
                       f"{target.display(d['path'])}")
        click.echo(f"{len(gone)} deleted file(s) can be restored")
        return
    if target.fs.exists(target.path):
        raise AlreadyExists(f"{target.display(target.path)} exists: `aiofs revert` it to a version",
                            target.path)
    v = layer.get_version(target.path, _version_arg(version)) if version is not None \
        else layer.versions(target.path)[0]
    # through the top of the stack, as for revert: layers above see the restored file
    target.fs.cp_file(layer.version_path(target.path, v["version_id"]), target.path)
    click.echo(f"{target.display(target.path)}: restored v{v['version_number']} ({_human(v['size'] or 0)})")


# -- offline layer: sync and status (issue 7) --------------------------------------------------


def _offline_layer(ctx, stack: str):
    """The Offline layer of a stack, or a clear error naming the stack."""
    from aiofs.layer import find_layer
    from aiofs.layers.offline import Offline

    name = stack.split(":", 1)[0] if ":" in stack and not stack.startswith("aiofs://") else stack
    fs = open_stack(name, ctx.obj)
    layer = find_layer(fs, Offline)
    if layer is None:
        raise InvalidArgument(f"stack {name!r} has no offline layer ({fs!r}); add "
                              f"{{ type = \"offline\" }} right above its backend in the config file")
    return name, layer


def _ago(when) -> str:
    if not when:
        return "-"
    seconds = max(0.0, time.time() - when)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@cli.command()
@click.argument("stack", default="default")
@click.option("--wait", is_flag=True, help="Drain the queue and exit (fails while offline).")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def sync(ctx, stack, wait, timeout, as_json):
    """Upload the offline layer's queued changes (start a drain; --wait drains and exits)."""
    name, layer = _offline_layer(ctx, stack)
    if wait:
        with _working("uploading queued changes"):
            totals = layer.sync(wait=True, timeout=timeout)
    else:
        layer.sync(wait=False)
        # this process is short-lived: give the drain a moment, then report what is left
        layer._syncer.wait_progress(1.0)
        totals = layer.queue_totals()
    if as_json:
        _echo_json({"stack": name, "online": layer.online, "queue": totals})
        return
    state = "online" if layer.online else "OFFLINE"
    if totals["count"] == 0:
        click.echo(f"stack {name} ({state}): everything is uploaded")
    else:
        click.echo(f"stack {name} ({state}): {totals['count']} operations queued "
                   f"({_human(totals['bytes'])}, oldest {_ago(totals['oldest'])}); "
                   "`aiofs sync --wait` drains them")


@cli.command()
@click.argument("stack", default="default")
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, stack, path, as_json):
    """Sync state: online/offline, queue totals, conflicts, and per-file states for PATH."""
    if path is None and ":" in stack and not stack.startswith("aiofs://"):
        stack, path = stack.split(":", 1)
    name, layer = _offline_layer(ctx, stack)
    report = layer.status(path or None)
    if as_json:
        _echo_json({"stack": name, **report})
        return
    queue = report["queue"]
    click.echo(f"stack {name}: {'online' if report['online'] else 'OFFLINE since ' + _ago(report['offline_since'])}; "
               f"{queue['count']} queued ({_human(queue['bytes'])}, oldest {_ago(queue['oldest'])}); "
               f"cache {_human(report['cache']['cached_bytes'])} of "
               f"{_human(report['cache']['max_cache_bytes'])}")
    for conflict in report["conflicts"]:
        where = f" -> {conflict['copy']}" if conflict["copy"] else ""
        click.echo(f"  conflict {conflict['outcome']}: {conflict['path']}{where}")
    for error in report["errors"]:
        click.echo(f"  error ({error['attempts']} attempts) {error['kind']} {error['path']}: {error['error']}")
    if "file" in report:
        f = report["file"]
        click.echo(f"{f['state']:>11}  {_human(f['size']):>10}  {f['path']}" + ("  (pinned)" if f["pinned"] else ""))
    for f in report.get("files", []):
        click.echo(f"{f['state']:>11}  {_human(f['size']):>10}  {f['path']}" + ("  (pinned)" if f["pinned"] else ""))
    if report.get("counts"):
        click.echo("  " + ", ".join(f"{n} {state}" for state, n in sorted(report["counts"].items())))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``aiofs`` command."""
    cli.main(args=argv, prog_name="aiofs")


if __name__ == "__main__":
    main()
