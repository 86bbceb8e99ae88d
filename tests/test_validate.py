"""Validate: file types from content, the upload policy, and the shipped suites."""

from __future__ import annotations

import io
import itertools
import zipfile

import fsspec
import pytest

from aiofs import LocalBackend
from aiofs.errors import InvalidArgument, InvalidFileType
from aiofs.layers import Quota, Validate
from aiofs.layers.validate import SNIFF_BYTES, check_content, detect
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.stateful import run_stateful
from conftest import drop_memory_root, new_memory_root, snapshot_tree

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
GIF = b"GIF89a" + b"\x00" * 64
PDF = b"%PDF-1.7\n" + b"1 0 obj\n" * 20
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 120
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
GZIP = b"\x1f\x8b\x08\x00" + b"\x00" * 64
TEXT = b"just some text, nothing magic about it\n" * 10
CODE = b"def main():\n    print('hello')\n" * 10


def zip_bytes(names=("a.txt",)) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name in names:
            z.writestr(name, "content")
    return buffer.getvalue()


def docx_bytes() -> bytes:
    return zip_bytes(("[Content_Types].xml", "word/document.xml"))


def validate_over_local(tmp_path, **options):
    return Validate(fs=LocalBackend(str(tmp_path / "store"), fsync=False), **options)


# -- the shipped suites --------------------------------------------------------------------------


class TestValidateOverLocalAbstract(FsspecAbstractSuite):
    def make_fs(self, tmp_path):
        return validate_over_local(tmp_path), "/data"


class TestValidateOverLocalConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return validate_over_local(tmp_path), ""


class TestValidateOverMemoryConformance(ConformanceSuite):
    def make_fs(self, tmp_path):
        return Validate(fs=fsspec.filesystem("memory")), new_memory_root()

    def cleanup_fs(self, fs, root):
        drop_memory_root(root)


def test_validate_over_local_stateful_model(tmp_path):
    fs = validate_over_local(tmp_path)
    counter = itertools.count()
    assert run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=500) >= 500


# -- the policy -------------------------------------------------------------------------------

ACCEPTED = [
    ("image.png", PNG), ("photo.jpg", JPEG), ("photo.jpeg", JPEG), ("anim.gif", GIF),
    ("paper.pdf", PDF), ("clip.mp4", MP4), ("clip.m4v", MP4), ("clip.mov", MP4),
    ("archive.zip", zip_bytes()), ("report.docx", docx_bytes()), ("report.zip", docx_bytes()),
    ("data.gz", GZIP), ("tool.bin", ELF), ("tool", ELF), ("notes.txt", TEXT), ("main.py", CODE),
    ("README", TEXT), ("blob.bin", TEXT), ("data.csv", TEXT), ("empty.png", b""),
    ("weird.xyz", PNG),  # an unknown extension cannot be contradicted
]

REJECTED = [
    ("image.png", ELF, "application/x-executable"),
    ("photo.jpg", PNG, "image/png"),
    ("paper.pdf", zip_bytes(), "application/zip"),
    ("report.docx", PDF, "application/pdf"),
    ("clip.mp4", GIF, "image/gif"),
    ("image.png", TEXT, "no image/png signature"),
    ("paper.pdf", b"x", "no application/pdf signature"),
    ("archive.zip", CODE, "no application/zip signature"),
]


@pytest.mark.parametrize(("name", "content"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(tmp_path, name, content):
    fs = validate_over_local(tmp_path)
    fs.pipe_file(name, content)
    with fs.open(f"streamed-{name}", "wb") as f:
        for i in range(0, len(content), 7):
            f.write(content[i:i + 7])
    assert fs.cat_file(name) == fs.cat_file(f"streamed-{name}") == content


@pytest.mark.parametrize(("name", "content", "detail"), REJECTED, ids=[r[0] + "-" + r[2][:12] for r in REJECTED])
def test_rejected_and_nothing_stored(tmp_path, name, content, detail):
    fs = validate_over_local(tmp_path)
    fs.pipe_file("keep.txt", b"keep")
    local = tmp_path / "upload"
    local.write_bytes(content)
    before = snapshot_tree(tmp_path / "store")

    def streamed():
        with fs.open(name, "wb") as f:
            f.write(content)
            f.write(b"\x00" * SNIFF_BYTES)  # the check happens before these bytes land

    attempts = {
        "pipe_file": lambda: fs.pipe_file(name, content),
        "pipe": lambda: fs.pipe({"ok.txt": b"fine", name: content}),
        "open": streamed,
        "put_file": lambda: fs.put_file(str(local), name),
    }
    for how, attempt in attempts.items():
        with pytest.raises(InvalidFileType) as info:
            attempt()
        assert info.value.code == "INVALID_FILE_TYPE", how
        assert detail in str(info.value) and name in str(info.value), (how, str(info.value))
        assert info.value.http_status == 415
        assert snapshot_tree(tmp_path / "store") == before, how


def test_the_issue_example_elf_named_png(tmp_path):
    fs = validate_over_local(tmp_path)
    with pytest.raises(InvalidFileType, match=r"application/x-executable .*contradicts its extension \.png"):
        fs.pipe_file("avatar.png", ELF)


def test_copy_and_rename_to_a_contradicting_name(tmp_path):
    fs = validate_over_local(tmp_path)
    fs.pipe_file("tool.bin", ELF)
    for attempt in (lambda: fs.cp_file("tool.bin", "tool.png"), lambda: fs.mv("tool.bin", "tool.png")):
        with pytest.raises(InvalidFileType):
            attempt()
    assert fs.cat_file("tool.bin") == ELF and not fs.exists("tool.png")
    fs.cp_file("tool.bin", "copy.bin")
    fs.mv("tool.bin", "tool.elf")
    assert fs.cat_file("tool.elf") == ELF


def test_allow_list(tmp_path):
    fs = validate_over_local(tmp_path, allowed=["images", "video", "application/pdf", ".gz"])
    for name, content in [("a.png", PNG), ("b.jpg", JPEG), ("c.mp4", MP4), ("d.pdf", PDF),
                          ("e.gz", GZIP), ("f.txt", TEXT), ("g.py", CODE), ("h", TEXT)]:
        fs.pipe_file(name, content)
    for name, content in [("x.zip", zip_bytes()), ("tool.bin", ELF), ("r.docx", docx_bytes())]:
        with pytest.raises(InvalidFileType, match="not an allowed type"):
            fs.pipe_file(name, content)
    wildcard = validate_over_local(tmp_path, allowed="image/*")
    wildcard.pipe_file("w.gif", GIF)
    with pytest.raises(InvalidFileType):
        wildcard.pipe_file("w.pdf", PDF)


def test_bad_allow_list(tmp_path):
    with pytest.raises(InvalidArgument, match="unknown category"):
        validate_over_local(tmp_path, allowed=["pictures"])


def test_detect():
    assert detect(PNG) == ("png", "image/png", "image")
    assert detect(ELF)[2] == "executable"
    assert detect(PDF)[2] == "document"
    assert detect(TEXT) is None and detect(b"") is None
    assert check_content("x.txt", TEXT) is None


def test_validate_over_quota_rejects_before_reserving(tmp_path):
    q = Quota(fs=LocalBackend(str(tmp_path / "store"), fsync=False), db_path=str(tmp_path / "q.db"),
              max_bytes=1000, max_file_size=None)
    fs = Validate(fs=q)
    fs.pipe_file("a.png", PNG)
    with pytest.raises(InvalidFileType):
        fs.pipe_file("b.png", ELF)
    assert q.usage()["used"] == len(PNG)
    assert repr(fs) == f"Validate(Quota(Local({str(tmp_path / 'store')!r})))"
