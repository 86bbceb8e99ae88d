"""DriveBackend against the Drive v3 emulator over real HTTP: the shipped suites (also with
10 % injected faults), uploads that survive failures, retries that never duplicate, native
documents, duplicate names, revisions, quota, trash, changes."""

from __future__ import annotations

import itertools
import os
import uuid
import warnings

import pytest

from aiofs.backends.drive import DriveBackend, DuplicateNameWarning
from aiofs.errors import AlreadyExists, NotFound, PermissionDenied, ReadOnly, StorageQuotaExceeded
from aiofs.testing.abstract import FsspecAbstractSuite
from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.drive_emulator import FOLDER, DriveEmulator
from aiofs.testing.stateful import run_stateful

# Examples for the model tests: 500 like the other backends unless AIOFS_DRIVE_EXAMPLES says.
EXAMPLES = int(os.environ.get("AIOFS_DRIVE_EXAMPLES", "500"))
FAULT_EXAMPLES = int(os.environ.get("AIOFS_DRIVE_FAULT_EXAMPLES", "500"))
KIB, MIB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def emu():
    with DriveEmulator() as emulator:
        yield emulator


@pytest.fixture
def fresh():
    """A private emulator for tests that count requests or change its settings."""
    with DriveEmulator(short_page_rate=0.0, partial_keep_rate=0.0) as emulator:
        yield emulator


def backend(emulator, **options) -> DriveBackend:
    options.setdefault("root_folder", f"aio-{uuid.uuid4().hex[:12]}")
    return DriveBackend(**emulator.backend_options(**options))


class TestDriveAbstract(FsspecAbstractSuite):
    @pytest.fixture(autouse=True)
    def _emulator(self, emu):
        self.emulator = emu

    def make_fs(self, tmp_path):
        return backend(self.emulator), "/"


class TestDriveConformance(ConformanceSuite):
    @pytest.fixture(autouse=True)
    def _emulator(self, emu):
        self.emulator = emu

    def make_fs(self, tmp_path):
        return backend(self.emulator), "/"


class TestDriveConformanceInSubdirectory(ConformanceSuite):
    @pytest.fixture(autouse=True)
    def _emulator(self, emu):
        self.emulator = emu

    def make_fs(self, tmp_path):
        return backend(self.emulator), "sub/dir"


@pytest.fixture(scope="module")
def faulty():
    """An emulator failing 10 % of requests (rate limits, 429, 5xx, drops, lost sessions;
    half of the failures of changing requests after the change was made)."""
    with DriveEmulator(seed=7) as emulator:
        emulator.faults.configure(rate=0.10, kinds=("rate_limit", "429", "500", "503", "drop",
                                                    "session_lost"), after_commit=0.5, seed=7)
        yield emulator
        assert sum(emulator.faults.injected.values()) > 100, emulator.faults.injected


class FaultyTarget:
    """Suites against the faulty emulator; after each test, no name is held twice."""

    @pytest.fixture(autouse=True)
    def _emulator(self, faulty):
        self.emulator = faulty

    def make_fs(self, tmp_path):
        return backend(self.emulator, simple_upload_max=64 * KIB, chunk_size=256 * KIB), "/"

    def cleanup_fs(self, fs, root):
        assert self.emulator.duplicates() == [], "a retry created a duplicate"
        super().cleanup_fs(fs, root)


class TestDriveAbstractWithFaults(FaultyTarget, FsspecAbstractSuite):
    pass


class TestDriveConformanceWithFaults(FaultyTarget, ConformanceSuite):
    pass


def test_drive_stateful_model(emu):
    fs = backend(emu)
    counter = itertools.count()
    assert run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=EXAMPLES) >= EXAMPLES
    assert emu.duplicates() == []


def test_drive_stateful_model_with_faults():
    """10 % of requests fail (403 rate limit, 429, 500, 503, dropped connections, half of the
    failures of changing requests after the change was made, lost upload sessions): the
    model still matches and retries created no duplicate file."""
    with DriveEmulator(seed=3) as emulator:
        fs = backend(emulator, simple_upload_max=4 * KIB, chunk_size=256 * KIB)
        emulator.faults.configure(rate=0.10, kinds=("rate_limit", "429", "500", "503", "drop",
                                                    "session_lost"), after_commit=0.5, seed=11)
        counter = itertools.count()
        ran = run_stateful(lambda: (fs, f"run{next(counter)}"), max_examples=FAULT_EXAMPLES)
        injected = dict(emulator.faults.injected)
        emulator.faults.configure(rate=0.0)
        assert ran >= FAULT_EXAMPLES
        assert sum(injected.values()) > 100, injected
        assert emulator.duplicates() == []
        # nothing but the dedicated root folder is left (every run cleaned up its files)
        live = [f for f in emulator.snapshot() if f["path"] != fs.root_folder]
        assert live == []


def test_pipe_under_faults_loses_nothing_and_duplicates_nothing():
    with DriveEmulator(seed=5) as emulator:
        fs = backend(emulator, simple_upload_max=64 * KIB, chunk_size=256 * KIB)
        files = {f"/batch/d{i % 4}/f{i:03d}.bin": os.urandom(i * 997 % (600 * KIB)) for i in range(80)}
        emulator.faults.configure(rate=0.10, kinds=("rate_limit", "429", "500", "503", "drop",
                                                    "session_lost"), after_commit=0.5, seed=2)
        fs.pipe(files)
        emulator.faults.configure(rate=0.0)
        assert emulator.duplicates() == []
        fs.invalidate_cache()
        assert fs.cat(sorted(files)) == {k: v for k, v in sorted(files.items())}
        stored = [f for f in emulator.snapshot() if f["mimeType"] != FOLDER]
        assert len(stored) == len(files)
        assert sum(emulator.faults.injected.values()) > 5


# -- uploads ---------------------------------------------------------------------------------------

def test_resumable_upload_resumes_after_a_dropped_connection(fresh):
    fs = backend(fresh, simple_upload_max=MIB, chunk_size=1 * MIB)
    data = os.urandom(8 * MIB + 12345)
    fs.info("/")  # the root folder exists: only the upload is counted below
    fresh.reset_counters()
    fresh.faults.drop_upload_at(4 * MIB + 700 * KIB)
    fs.pipe_file("big.bin", data)
    assert fs.cat_file("big.bin") == data
    resent = fresh.upload_bytes - len(data)
    assert 0 < resent <= 1 * MIB, resent          # at most one chunk goes again
    assert fresh.stats["upload.resumable.start"] == 1  # resumed, not restarted
    assert fresh.duplicates() == []


def test_resumable_upload_restarts_when_the_session_is_lost(fresh):
    fs = backend(fresh, simple_upload_max=MIB, chunk_size=1 * MIB)
    data = os.urandom(3 * MIB + 5)
    fresh.faults.push("session_lost", operation="upload.resumable.chunk")
    fs.pipe_file("lost.bin", data)
    assert fs.cat_file("lost.bin") == data
    assert fresh.stats["upload.resumable.start"] == 2
    assert [f["name"] for f in fresh.snapshot() if f["name"] == "lost.bin"] == ["lost.bin"]


def test_resumable_upload_follows_the_range_the_server_kept():
    with DriveEmulator(partial_keep_rate=1.0) as emulator:  # every chunk: server keeps less
        fs = backend(emulator, simple_upload_max=MIB, chunk_size=1 * MIB)
        data = os.urandom(5 * MIB + 77)
        fs.pipe_file("partial.bin", data)
        assert fs.cat_file("partial.bin") == data
        assert emulator.stats["upload.resumable.chunk"] > 6


def test_streaming_write_is_atomic_and_discarded_on_error(fresh):
    fs = backend(fresh, simple_upload_max=MIB, chunk_size=MIB)
    fs.pipe_file("keep.bin", b"old")
    with pytest.raises(RuntimeError):
        with fs.open("keep.bin", "wb") as f:
            f.write(b"x" * (3 * MIB))
            raise RuntimeError("writer failed")
    fs.invalidate_cache()
    assert fs.cat_file("keep.bin") == b"old"
    with fs.open("keep.bin", "wb") as f:
        for _ in range(3):
            f.write(b"y" * MIB)
    assert fs.cat_file("keep.bin") == b"y" * (3 * MIB)
    names = [f["name"] for f in fresh.snapshot() if f["name"] == "keep.bin"]
    assert names == ["keep.bin"]  # an overwrite is a new revision, never a second file
    assert len(fs.revisions("keep.bin")) == 2


def test_retried_create_after_a_lost_response_makes_no_duplicate(fresh):
    fs = backend(fresh)
    fs.info("/")
    fresh.faults.push("500", operation="upload.multipart", after=True)
    fresh.faults.push("drop", operation="files.create", after=True)
    fresh.faults.push("503", operation="files.copy", after=True)
    fs.pipe_file("dir/once.txt", b"one")
    fs.cp_file("dir/once.txt", "dir/copy.txt")
    assert fresh.faults.scripted == []
    assert fresh.duplicates() == []
    names = sorted(f["path"] for f in fresh.snapshot())
    assert names == [fs.root_folder, f"{fs.root_folder}/dir", f"{fs.root_folder}/dir/copy.txt",
                     f"{fs.root_folder}/dir/once.txt"]


def test_retried_delete_after_a_lost_response_succeeds(fresh):
    fs = backend(fresh)
    fs.pipe_file("gone.txt", b"x")
    fresh.faults.push("500", operation="files.delete", after=True)
    fs.rm_file("gone.txt")
    fs.invalidate_cache()
    assert not fs.exists("gone.txt")


def test_rate_limits_and_server_errors_are_retried(fresh):
    fs = backend(fresh)
    fs.info("/")
    for kind in ("rate_limit", "429", "500", "503", "drop"):
        fresh.faults.push(kind, operation="files.download")
    fs.pipe_file("r.txt", b"retry me")
    assert fs.cat_file("r.txt") == b"retry me"
    assert fs.client.retries == 5
    assert fresh.stats["files.download"] == 6


def test_errors_that_are_not_transient_are_not_retried(fresh):
    fs = backend(fresh, retries=2)
    fs.info("/")
    fresh.faults.push("500", operation="files.download", count=10)
    fs.pipe_file("x.txt", b"x")
    from aiofs.errors import BackendUnavailable
    with pytest.raises(BackendUnavailable):
        fs.cat_file("x.txt")
    assert fresh.stats["files.download"] == 3  # truncated: 1 + 2 retries
    fresh.faults.scripted.clear()


def test_storage_quota_exceeded_fails_at_once(fresh):
    fs = backend(fresh)
    fs.info("/")
    fresh.set_quota(10_000)
    fresh.reset_counters()
    with pytest.raises(StorageQuotaExceeded) as info:
        fs.pipe_file("big.bin", b"x" * 20_000)
    assert info.value.code == "STORAGE_QUOTA_EXCEEDED"
    assert fresh.stats["upload.multipart"] == 1  # no retry
    fs.invalidate_cache()
    assert not fs.exists("big.bin")


def test_injected_quota_error_is_not_retried(fresh):
    fs = backend(fresh, simple_upload_max=64 * KIB, chunk_size=256 * KIB)
    fs.info("/")
    fresh.reset_counters()
    fresh.faults.push("quota", operation="upload.resumable.chunk")
    with pytest.raises(StorageQuotaExceeded):
        fs.pipe_file("q.bin", b"q" * (300 * KIB))
    assert fresh.stats["upload.resumable.chunk"] == 1
    fs.invalidate_cache()
    assert not fs.exists("q.bin")


def test_expired_token_is_refreshed_once_transparently(fresh):
    fs = backend(fresh)
    fs.pipe_file("a.txt", b"a")
    refreshes = fs.credentials.refresh_count
    fresh.expire_tokens()
    assert fs.cat_file("a.txt") == b"a"
    assert fs.credentials.refresh_count == refreshes + 1
    assert fs.client.refreshes == 1


# -- Drive semantics ---------------------------------------------------------------------------------

def test_google_docs_are_read_only_exports_with_a_real_size(fresh):
    fs = backend(fresh)
    root = fs.info("/")["id"]
    fresh.add_file("Report", parent_id=root, mime_type="application/vnd.google-apps.document",
                   text="quarterly numbers", by_app=True)
    fresh.add_file("Budget", parent_id=root, mime_type="application/vnd.google-apps.spreadsheet",
                   text="a,b\n1,2", by_app=True)
    fresh.add_file("Deck", parent_id=root, mime_type="application/vnd.google-apps.presentation",
                   text="slide one", by_app=True)
    fs.invalidate_cache()
    entries = {e["name"]: e for e in fs.ls("/")}
    assert sorted(entries) == ["/Budget.xlsx", "/Deck.pptx", "/Report.docx"]
    docx = fs.cat_file("Report.docx")
    assert docx[:2] == b"PK" and entries["/Report.docx"]["size"] == len(docx) > 0
    assert fs.info("Budget.xlsx")["size"] == len(fs.cat_file("Budget.xlsx")) > 0
    assert fs.cat_file("Report.docx", 0, 2) == b"PK"
    with pytest.raises(ReadOnly):
        fs.pipe_file("Report.docx", b"overwrite")
    with pytest.raises(PermissionError):
        with fs.open("Deck.pptx", "wb") as f:
            f.write(b"no")
    fs.cp_file("Report.docx", "copy.docx")
    assert fs.cat_file("copy.docx") == docx


def test_name_queries_are_rechecked_exactly(fresh):
    fs = backend(fresh)
    root = fs.info("/")["id"]
    fresh.add_file("Notes.TXT", b"upper", parent_id=root, by_app=True)
    fs.invalidate_cache()
    with pytest.raises(FileNotFoundError):
        fs.info("notes.txt")  # Drive's `name =` matches it; the backend must not
    fs.pipe_file("notes.txt", b"lower")
    assert fs.cat_file("Notes.TXT") == b"upper"
    assert fs.cat_file("notes.txt") == b"lower"
    name_with_quote = "it's a \\ test.txt"
    fs.pipe_file(name_with_quote, b"quoted")
    fs.invalidate_cache()
    assert fs.cat_file(name_with_quote) == b"quoted"


def test_names_no_path_can_reach_are_not_listed(fresh):
    fs = backend(fresh)
    root = fs.info("/")["id"]
    fresh.add_file("a/b.txt", b"slash", parent_id=root, by_app=True)
    fresh.add_file("..", b"dots", parent_id=root, by_app=True)
    fresh.add_file("Form", parent_id=root, mime_type="application/vnd.google-apps.form", by_app=True)
    fresh.add_file("ok.txt", b"ok", parent_id=root, by_app=True)
    fs.invalidate_cache()
    assert fs.ls("/", detail=False) == ["/ok.txt"]
    assert fs.find("/") == ["/ok.txt"]


def test_duplicate_names_resolve_deterministically_with_a_warning(fresh):
    fs = backend(fresh)
    root = fs.info("/")["id"]
    first = fresh.add_file("dup.txt", b"first", parent_id=root, by_app=True)
    fresh.add_file("dup.txt", b"second", parent_id=root, by_app=True)
    fresh.add_file("dup.txt", b"first", parent_id=root, by_app=True)
    fs.invalidate_cache()
    with pytest.warns(DuplicateNameWarning):
        assert fs.info("dup.txt")["id"] == first
    for _ in range(3):
        fs.invalidate_cache()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert fs.cat_file("dup.txt") == b"first"
            assert [e["name"] for e in fs.ls("/")] == ["/dup.txt"]
    groups = fs.duplicate_names()
    assert [g["path"] for g in groups] == ["/dup.txt"] and len(groups[0]["files"]) == 3
    result = fs.merge_duplicate_names()
    assert sorted(a["action"] for a in result["actions"]) == ["rename", "trash"]
    assert fs.duplicate_names() == []
    assert sorted(fs.ls("/", detail=False)) == ["/dup (2).txt", "/dup.txt"]
    assert fs.cat_file("dup (2).txt") == b"second"
    assert fresh.duplicates() == []


def test_trash_option_moves_to_trash(fresh):
    fs = backend(fresh, trash=True)
    fs.pipe_file("t/a.txt", b"a")
    fs.rm("t", recursive=True)
    assert not fs.exists("t")
    trashed = [f for f in fresh.snapshot(trashed=True) if f["trashed"]]
    assert sorted(f["name"] for f in trashed) == ["a.txt", "t"]
    assert fs.storage_quota()["usage_in_drive_trash"] == 1


def test_mv_is_one_update_with_add_and_remove_parents(fresh):
    fs = backend(fresh)
    fs.pipe_file("src/a.txt", b"a")
    fs.makedirs("dst")
    fid = fs.info("src/a.txt")["id"]
    fresh.reset_counters()
    fs.mv("src/a.txt", "dst/b.txt")
    assert fresh.stats["files.update"] == 1
    assert fresh.stats["upload.multipart"] == fresh.stats["files.copy"] == 0
    assert fs.info("dst/b.txt")["id"] == fid


def test_overwrite_is_a_new_revision_and_revisions_are_readable(fresh):
    fs = backend(fresh)
    for text in (b"v1", b"v2", b"v3"):
        fs.pipe_file("doc.txt", text)
    revisions = fs.revisions("doc.txt")
    assert [r["size"] for r in revisions] == [2, 2, 2]
    assert [fs.read_revision("doc.txt", r["revision_id"]) for r in revisions] == [b"v3", b"v2", b"v1"]
    fs.keep_revision("doc.txt", revisions[-1]["revision_id"])
    assert fs.revisions("doc.txt")[-1]["keep_forever"] is True
    assert len([f for f in fresh.snapshot() if f["name"] == "doc.txt"]) == 1
    from aiofs.errors import VersionNotFound
    with pytest.raises(VersionNotFound):
        fs.read_revision("doc.txt", "nope")


def test_checksums_come_from_md5(fresh):
    import hashlib

    fs = backend(fresh)
    fs.pipe_file("c.bin", b"checksum me")
    fresh.reset_counters()
    assert fs.checksum("c.bin") == int(hashlib.md5(b"checksum me").hexdigest(), 16)
    assert fs.ukey("c.bin") == hashlib.md5(b"checksum me").hexdigest()
    assert fresh.stats["files.download"] == 0


def test_path_cache_is_refreshed_from_changes(fresh):
    fs = backend(fresh, changes_interval=0.0)
    other = backend(fresh, root_folder=fs.root_folder)
    fs.pipe_file("shared.txt", b"mine")
    assert fs.cat_file("shared.txt") == b"mine"
    other.rm_file("shared.txt")
    other.pipe_file("shared.txt", b"theirs")
    other.pipe_file("new.txt", b"new")
    assert fs.cat_file("shared.txt") == b"theirs"
    assert sorted(fs.ls("/", detail=False)) == ["/new.txt", "/shared.txt"]
    assert fresh.stats["changes.list"] >= 1


def test_root_folder_deleted_elsewhere_is_made_again(fresh):
    fs = backend(fresh, changes_interval=0.0)
    fs.pipe_file("a.txt", b"a")
    folder = fresh.find_folder(fs.root_folder)
    # another client (the web UI) deletes the whole folder
    fresh.run_in_loop(lambda: fresh.state.delete(fresh.state.files[folder]))
    assert not fs.exists("a.txt")
    fs.pipe_file("b.txt", b"b")
    assert fs.cat_file("b.txt") == b"b"
    assert fresh.find_folder(fs.root_folder) is not None


def test_ls_is_one_listing_per_folder_page(fresh):
    fs = backend(fresh)
    fs.pipe({f"/many/f{i:04d}": b"x" for i in range(300)})
    reader = backend(fresh, root_folder=fs.root_folder)
    reader.info("/many")
    fresh.reset_counters()
    assert len(reader.ls("/many")) == 300
    assert fresh.stats["files.list"] == 1
    assert sum(fresh.stats.values()) == 1


def test_bulk_pipe_creates_each_parent_once(fresh):
    fs = backend(fresh, max_concurrency=16)
    fs.pipe({f"/p/q/f{i}": b"x" for i in range(40)})
    folders = [f for f in fresh.snapshot() if f["mimeType"] == FOLDER]
    assert sorted(f["name"] for f in folders) == sorted([fs.root_folder, "p", "q"])
    assert fresh.duplicates() == []


def test_root_folder_by_id_and_created_once(fresh):
    fs = backend(fresh, root_folder="AIO")
    fs.pipe_file("x", b"1")
    again = backend(fresh, root_folder="AIO")
    assert again.cat_file("x") == b"1"
    folder_id = fresh.find_folder("AIO")
    by_id = DriveBackend(**fresh.backend_options(root_folder_id=folder_id))
    assert by_id.cat_file("x") == b"1"
    assert len([f for f in fresh.snapshot() if f["name"] == "AIO"]) == 1


def test_drive_file_scope_sees_only_app_files(fresh):
    from aiofs.testing.drive_emulator import SCOPE_FILE

    fs = DriveBackend(**fresh.backend_options(scopes=(SCOPE_FILE,), root_folder="scoped"))
    fs.pipe_file("mine.txt", b"mine")
    root = fs.info("/")["id"]
    fresh.add_file("web-ui.txt", b"not ours", parent_id=root, by_app=False)
    fs.invalidate_cache()
    assert fs.ls("/", detail=False) == ["/mine.txt"]


def test_exclusive_create(fresh):
    fs = backend(fresh)
    fs.pipe_file("x.txt", b"1")
    with pytest.raises(AlreadyExists):
        fs.pipe_file("x.txt", b"2", mode="create")
    with pytest.raises(NotFound):
        fs.mv("nope", "other")
    assert fs.cat_file("x.txt") == b"1"


def test_backend_repr_capabilities_and_stack_type(fresh):
    from aiofs.layer import NATIVE_VERSIONS, Layer, capabilities_of

    fs = backend(fresh, root_folder="AIO")
    assert repr(Layer(fs=fs)) == "Layer(Drive('AIO'))"
    assert NATIVE_VERSIONS in capabilities_of(Layer(fs=fs))
    import pickle
    clone = pickle.loads(pickle.dumps(fs))
    clone.pipe_file("p.txt", b"pickled")
    assert fs.cat_file("p.txt") == b"pickled"


def test_permission_errors_map_to_codes(fresh):
    fs = backend(fresh)
    fresh.faults.push("rate_limit", count=20)
    fs2 = backend(fresh, retries=0)
    from aiofs.errors import RateLimited
    with pytest.raises(RateLimited):
        fs2.info("/")
    fresh.faults.scripted.clear()
    assert issubclass(ReadOnly, PermissionError) and issubclass(PermissionDenied, PermissionError)
