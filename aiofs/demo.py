"""``aiofs demo``: a short tour of what a stack does, run on a real stack.

Everything it writes lives under ``/aiofs-demo`` in the chosen stack (by default the
built-in ``default`` stack), so you can look at it afterwards with ``aiofs ls`` and
``aiofs tree``. The tour grows as layers land; each step checks what it shows and the
command fails if something does not hold.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

import fsspec

from aiofs.errors import AiofsError
from aiofs.stack import open_stack

DEMO_DIR = "aiofs-demo"


class DemoFailure(AssertionError):
    """A step of the tour did not produce what it should have."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailure(f"demo check failed: {what}")


def _artifacts() -> dict[str, bytes]:
    """A small, deterministic set of the artifacts a creative tool saves."""
    canvas = {"version": 1, "layers": [{"id": "bg", "type": "fill", "color": "#fff"},
                                       {"id": "t1", "type": "text", "text": "hello aiofs"}]}
    rng = random.Random(7)
    return {
        f"{DEMO_DIR}/canvases/poster.json": json.dumps(canvas, indent=2).encode(),
        f"{DEMO_DIR}/docs/readme.md": b"# Notes\n\n" + b"A line of notes.\n" * 20000,
        f"{DEMO_DIR}/code/hello.py": b"print('hello from aiofs')\n",
        f"{DEMO_DIR}/media/clip.bin": rng.randbytes(3 * 1024 * 1024),
    }


def _tour_layers(fs, files: dict[str, bytes], echo: Callable[[str], None]) -> None:
    """The steps that need a layer the stack may not have (the default stack has all)."""
    from aiofs.backends import LocalBackend
    from aiofs.errors import FileTooLarge, InvalidFileType
    from aiofs.layer import find_layer, internal_access
    from aiofs.layers import Compress, Dedup, Quota, Validate, Versioning

    if find_layer(fs, Validate) is not None:
        try:
            fs.pipe_file(f"{DEMO_DIR}/media/photo.png", b"\x7fELF\x02\x01\x01" + bytes(200))
        except InvalidFileType as exc:
            echo(f"8. validation: a .png that is an ELF binary is refused: [{exc.code}]")
        else:
            raise DemoFailure("an ELF binary named .png was accepted")
        _check(not fs.exists(f"{DEMO_DIR}/media/photo.png"), "nothing stored after a refused upload")
    quota = find_layer(fs, Quota)
    if quota is not None:
        limit = quota.statfs()["max_file_size"]
        try:
            fs.pipe_file(f"{DEMO_DIR}/media/huge.bin", bytes(limit + 1))
        except FileTooLarge as exc:
            echo(f"9. quota: a file of {limit + 1:,} bytes is refused before a byte is stored: [{exc.code}]")
        else:
            raise DemoFailure("a file over max_file_size was accepted")
        usage = quota.statfs()
        echo(f"   usage {usage['used']:,} of {usage['total']:,} bytes")
    dedup = find_layer(fs, Dedup)
    if dedup is not None:
        before = dedup.stats()
        clip = f"{DEMO_DIR}/media/clip.bin"
        fs.pipe_file(f"{DEMO_DIR}/media/clip-copy.bin", files[clip])
        after = dedup.stats()
        _check(after["unique_chunk_bytes"] == before["unique_chunk_bytes"],
               "a duplicate upload stores no new chunk")
        fs.rm_file(f"{DEMO_DIR}/media/clip-copy.bin")
        echo(f"10. dedup: uploading the {len(files[clip]):,}-byte clip again stored no new chunk "
             f"({after['chunks']} chunks in {after['packs']} packs); `aiofs check` verifies them")
    backend = find_layer(fs, LocalBackend)
    if find_layer(fs, Compress) is not None and backend is not None:
        if dedup is not None:  # file bytes live in the dedup store's packs
            with internal_access():
                stored = backend.du(dedup.store.packs_dir)
            logical = dedup.stats()["unique_chunk_bytes"]
            where = "the store's packs"
        else:
            stored, logical = backend.du(DEMO_DIR), sum(len(d) for d in files.values())
            where = "the tour's files"
        echo(f"11. compression: {where} hold {logical:,} bytes, stored as {stored:,} on disk"
             f" (random media kept raw, text compressed); `zstd -d` restores any object")
    versioning = find_layer(fs, Versioning)
    if versioning is not None:
        poster = f"{DEMO_DIR}/canvases/poster.json"
        canvas = json.loads(files[poster])
        canvas["layers"].append({"id": "logo", "type": "image", "src": "logo.png"})
        fs.pipe_file(poster, json.dumps(canvas, indent=2).encode(), description="added the logo")
        (previous, *_) = versioning.versions(poster)
        _check(versioning.read_version(poster, previous["version_id"]) == files[poster],
               "the previous version reads back")
        added = [a["path"] for a in versioning.compare(poster, previous["version_id"])["content"]["added"]]
        versioning.revert(poster, previous["version_id"])
        _check(fs.cat_file(poster) == files[poster], "revert restores the old canvas")
        echo(f"12. versioning: the poster's edit added {', '.join(added)}; reverted to "
             f"v{previous['version_number']}, and the edit is kept as a version "
             f"(`aiofs versions default:/{poster}`, or open .versions/{poster}/ in the mount)")


def run_demo(stack: str = "default", config: str | None = None, echo: Callable[[str], None] = print) -> None:
    """Run the tour on ``stack``; raises :class:`DemoFailure` if any step misbehaves."""
    fs = open_stack(stack, config)
    echo(f"stack {stack!r}: {fs!r}")

    files = _artifacts()
    if fs.exists(DEMO_DIR):  # a previous tour's files: start clean so every check is exact
        fs.rm(DEMO_DIR, recursive=True)
    fs.pipe(files)  # one bulk call: the backend group-commits all files durably
    echo(f"1. saved {len(files)} artifacts with one bulk write")

    for path, data in files.items():
        _check(fs.cat_file(path) == data, f"read back {path}")
    listing = sorted(fs.find(DEMO_DIR))
    _check(listing == sorted(fs._strip_protocol(p) for p in files), "find lists exactly what was written")
    echo(f"2. read back and verified every byte; find() lists {len(listing)} files")

    clip = f"{DEMO_DIR}/media/clip.bin"
    part = fs.cat_file(clip, start=1_000_000, end=1_000_016)
    _check(part == files[clip][1_000_000:1_000_016], "range read")
    tail = fs.cat_file(clip, start=-8)
    _check(tail == files[clip][-8:], "range read from the end")
    echo(f"3. range reads: 16 bytes at 1 MB = {part.hex()[:16]}..., last 8 bytes = {tail.hex()}")

    url = f"aiofs://{stack}/{DEMO_DIR}/docs/readme.md"
    with fsspec.open(url, "rb") as f:
        first_line = f.readline()
    _check(first_line == b"# Notes\n", "fsspec URL read")
    echo(f"4. any fsspec user (pandas, pyarrow, dask) reads {url}")

    total = fs.du(DEMO_DIR)
    _check(total == sum(len(d) for d in files.values()), "du reports logical bytes")
    echo(f"5. du {DEMO_DIR}: {total} bytes (logical size)")

    fs.mv(f"{DEMO_DIR}/docs/readme.md", f"{DEMO_DIR}/docs/README.md")
    _check(fs.exists(f"{DEMO_DIR}/docs/README.md") and not fs.exists(f"{DEMO_DIR}/docs/readme.md"), "rename")
    echo("6. renamed docs/readme.md -> docs/README.md")

    for bad in ("../outside.txt", "bad\x00name", "x" * 300):
        try:
            fs.pipe_file(bad, b"never stored")
        except AiofsError as exc:
            echo(f"7. refused {bad[:20]!r}: [{exc.code}] {exc.detail[:60]}")
        else:
            raise DemoFailure(f"bad path {bad[:20]!r} was accepted")

    _tour_layers(fs, files, echo)

    digest = hashlib.blake2b(fs.cat_file(clip), digest_size=8).hexdigest()
    echo(f"done: the tour's files are in {stack}:/{DEMO_DIR} (clip digest {digest});"
         f" try `aiofs tree {stack}:/{DEMO_DIR}`")
