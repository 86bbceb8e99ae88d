"""The Drive v3 emulator speaks Drive's protocol (raw HTTP), and Drive stacks plug into aiofs:
config, layers above, the storage overview."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from aiofs.testing.conformance import ConformanceSuite
from aiofs.testing.drive_emulator import (
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FOLDER, DriveEmulator,
)


@pytest.fixture(scope="module")
def emu():
    with DriveEmulator(short_page_rate=0.0, partial_keep_rate=0.0) as emulator:
        yield emulator


class Raw:
    """Plain HTTP against the emulator with a bearer token (no aiofs code involved)."""

    def __init__(self, emu):
        self.emu = emu
        self.token = emu.issue_token()

    def request(self, method, path, params=None, body=None, headers=None, raw=False):
        url = self.emu.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if isinstance(body, dict):
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                payload = resp.read()
                return resp.status, dict(resp.headers), payload if raw else _json(payload)
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            return exc.code, dict(exc.headers), payload if raw else _json(payload)


def _json(payload):
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return payload


@pytest.fixture
def raw(emu):
    return Raw(emu)


def reason(body):
    return body["error"]["errors"][0]["reason"]


def test_unauthenticated_requests_get_401(emu):
    req = urllib.request.Request(emu.url + "/drive/v3/files")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 401
    assert json.loads(info.value.read())["error"]["errors"][0]["reason"] == "authError"


def test_query_grammar_case_insensitive_names_and_escapes(emu, raw):
    parent = emu.add_file("q-folder", mime_type=FOLDER)
    for name in ("Report.txt", "report.TXT", "it's.txt", "back\\slash.txt", "other.bin"):
        emu.add_file(name, b"x", parent_id=parent)
    sub = emu.add_file("sub", mime_type=FOLDER, parent_id=parent)

    def names(q):
        status, _, body = raw.request("GET", "/drive/v3/files",
                                      {"q": q, "fields": "files(name)", "pageSize": "1000"})
        assert status == 200, body
        return sorted(f["name"] for f in body["files"])

    base = f"'{parent}' in parents"
    assert names(f"{base} and name = 'report.txt'") == ["Report.txt", "report.TXT"]
    assert names(f"{base} and name = 'it\\'s.txt'") == ["it's.txt"]
    assert names(f"{base} and name = 'back\\\\slash.txt'") == ["back\\slash.txt"]
    assert names(f"{base} and name contains 'REP'") == ["Report.txt", "report.TXT"]
    assert names(f"{base} and mimeType = '{FOLDER}'") == ["sub"]
    assert names(f"{base} and not (name contains 'report' or mimeType = '{FOLDER}')") == \
        ["back\\slash.txt", "it's.txt", "other.bin"]
    assert names(f"{base} and trashed = false and name != 'other.bin' and name contains '.txt'") \
        == ["Report.txt", "back\\slash.txt", "it's.txt", "report.TXT"]
    for bad in (f"{base} and nmae = 'x'", f"{base} and name = unquoted", "name = 'a' AND (",
                f"{base} and trashed = maybe"):
        status, _, body = raw.request("GET", "/drive/v3/files", {"q": bad})
        assert status == 400, bad
    assert sub


def test_fields_masks_are_checked(raw):
    status, _, body = raw.request("GET", "/drive/v3/files", {"fields": "files(id,nmae)"})
    assert status == 400 and body["error"]["errors"][0]["location"] == "fields"
    status, _, body = raw.request("GET", "/drive/v3/files/root", {"fields": "id,name"})
    assert status == 200 and set(body) == {"id", "name"}
    status, _, body = raw.request("GET", "/drive/v3/about")
    assert status == 400 and reason(body) == "required"
    status, _, body = raw.request("GET", "/drive/v3/about", {"fields": "storageQuota(limit,usage)"})
    assert status == 200 and isinstance(body["storageQuota"]["usage"], str)  # int64 as string


def test_paging_follows_tokens_and_pages_may_be_short():
    with DriveEmulator(short_page_rate=1.0) as emu:
        raw = Raw(emu)
        parent = emu.add_file("pages", mime_type=FOLDER)
        for i in range(25):
            emu.add_file(f"f{i:02d}", b"", parent_id=parent)
        seen, token, pages = [], None, 0
        while True:
            params = {"q": f"'{parent}' in parents", "pageSize": "10",
                      "fields": "nextPageToken,files(name)"}
            if token:
                params["pageToken"] = token
            _, _, body = raw.request("GET", "/drive/v3/files", params)
            pages += 1
            assert len(body["files"]) < 10  # every page short here
            seen += [f["name"] for f in body["files"]]
            token = body.get("nextPageToken")
            if not token:
                break
        assert sorted(seen) == [f"f{i:02d}" for i in range(25)] and pages > 3


def test_multipart_with_lf_and_crlf_and_ids(emu, raw):
    _, _, ids = raw.request("GET", "/drive/v3/files/generateIds", {"count": "2"})
    for newline, file_id in zip((b"\r\n", b"\n"), ids["ids"]):
        meta = json.dumps({"id": file_id, "name": f"mp{len(newline)}.bin"}).encode()
        body = newline.join([b"--XyZ", b"Content-Type: application/json", b"", meta, b"--XyZ",
                             b"Content-Type: application/octet-stream", b"",
                             b"line1\r\nline2", b"--XyZ--", b""])
        status, _, created = raw.request("POST", "/upload/drive/v3/files",
                                         {"uploadType": "multipart", "fields": "id,size"}, body,
                                         {"Content-Type": "multipart/related; boundary=XyZ"})
        assert status == 200 and created == {"id": file_id, "size": "12"}  # b"line1\r\nline2"
        status, _, again = raw.request("POST", "/upload/drive/v3/files",
                                       {"uploadType": "multipart"}, body,
                                       {"Content-Type": "multipart/related; boundary=XyZ"})
        assert status == 409  # a used id
    status, _, body = raw.request("POST", "/drive/v3/files", body={"id": "not-generated", "name": "x"})
    assert status == 400


def test_resumable_protocol(emu, raw):
    unit = 256 * 1024
    status, headers, _ = raw.request("POST", "/upload/drive/v3/files",
                                     {"uploadType": "resumable"}, {"name": "r.bin"},
                                     {"X-Upload-Content-Length": str(3 * unit + 5)})
    assert status == 200
    session = urllib.parse.urlsplit(headers["Location"])
    path, query = session.path, dict(urllib.parse.parse_qsl(session.query))
    data = bytes(range(256)) * (3 * unit // 256) + b"12345"

    def put(start, end, total="*", body=None):
        chunk = data[start:end] if body is None else body
        rng = f"bytes {start}-{end - 1}/{total}" if start is not None else f"bytes */{total}"
        return raw.request("PUT", path, query, chunk, {"Content-Range": rng}, raw=True)

    status, _, body = put(0, unit - 1)  # not a multiple of 256 KiB
    assert status == 400
    status, headers, _ = put(0, 2 * unit)
    assert status == 308 and headers["Range"] == f"bytes=0-{2 * unit - 1}"
    status, headers, _ = put(None, None, len(data), b"")  # status query
    assert status == 308 and headers["Range"] == f"bytes=0-{2 * unit - 1}"
    status, _, body = put(2 * unit, len(data), len(data))
    assert status == 201 and json.loads(body)["name"] == "r.bin"
    status, _, body = put(None, None, len(data), b"")
    assert status == 201  # a finished session answers with the file again
    file_id = json.loads(body)["id"]
    status, headers, body = raw.request("GET", f"/drive/v3/files/{file_id}", {"alt": "media"},
                                        headers={"Range": "bytes=10-19"}, raw=True)
    assert status == 206 and body == data[10:20] and headers["Content-Range"].endswith(f"/{len(data)}")
    status, _, _ = raw.request("GET", f"/drive/v3/files/{file_id}", {"alt": "media"},
                               headers={"Range": f"bytes={len(data)}-"}, raw=True)
    assert status == 416
    # an update session answers 200, not 201
    status, headers, _ = raw.request("PATCH", f"/upload/drive/v3/files/{file_id}",
                                     {"uploadType": "resumable"}, {})
    loc = urllib.parse.urlsplit(headers["Location"])
    status, _, _ = raw.request("PUT", loc.path, dict(urllib.parse.parse_qsl(loc.query)), b"new",
                               {"Content-Range": "bytes 0-2/3"}, raw=True)
    assert status == 200
    emu.expire_upload_sessions()
    status, _, _ = put(None, None, len(data), b"")
    assert status == 404


def test_moves_need_add_and_remove_parents(emu, raw):
    a = emu.add_file("mv-a", mime_type=FOLDER, by_app=True)
    b = emu.add_file("mv-b", mime_type=FOLDER, by_app=True)
    f = emu.add_file("f.txt", b"x", parent_id=a, by_app=True)
    status, _, body = raw.request("PATCH", f"/drive/v3/files/{f}", body={"parents": [b]})
    assert status == 403 and reason(body) == "fieldNotWritable"
    status, _, body = raw.request("PATCH", f"/drive/v3/files/{f}", {"addParents": b})
    assert status == 403 and reason(body) == "cannotAddParent"  # one parent per file
    status, _, body = raw.request("PATCH", f"/drive/v3/files/{f}",
                                  {"addParents": b, "removeParents": a, "fields": "parents"}, {})
    assert status == 200 and body["parents"] == [b]
    status, _, body = raw.request("PATCH", f"/drive/v3/files/{a}", {"addParents": a}, {})
    assert status == 400


def test_native_documents_export_only(emu, raw):
    doc = emu.add_file("Plan", mime_type="application/vnd.google-apps.document", text="hi")
    status, _, body = raw.request("GET", f"/drive/v3/files/{doc}", {"fields": "size,exportLinks"})
    assert "size" not in body and body["exportLinks"]
    status, _, body = raw.request("GET", f"/drive/v3/files/{doc}", {"alt": "media"})
    assert status == 403 and reason(body) == "fileNotDownloadable"
    status, _, body = raw.request("GET", f"/drive/v3/files/{doc}/export",
                                  {"mimeType": "text/plain"}, raw=True)
    assert status == 200 and body == b"hi"


def test_changes_and_revisions(emu, raw):
    _, _, start = raw.request("GET", "/drive/v3/changes/startPageToken")
    f = emu.add_file("ch.txt", b"1", by_app=True)
    status, _, body = raw.request("GET", "/drive/v3/changes", {"pageToken": start["startPageToken"]})
    assert status == 200 and [c["fileId"] for c in body["changes"]] == [f]
    assert "newStartPageToken" in body
    raw.request("PATCH", f"/upload/drive/v3/files/{f}", {"uploadType": "media"}, b"22")
    _, _, revs = raw.request("GET", f"/drive/v3/files/{f}/revisions",
                             {"fields": "revisions(id,size,keepForever)"})
    assert [r["size"] for r in revs["revisions"]] == ["1", "2"]
    rid = revs["revisions"][0]["id"]
    _, _, rev = raw.request("PATCH", f"/drive/v3/files/{f}/revisions/{rid}",
                            {"fields": "keepForever"}, {"keepForever": True})
    assert rev == {"keepForever": True}
    _, _, content = raw.request("GET", f"/drive/v3/files/{f}/revisions/{rid}", {"alt": "media"},
                                raw=True)
    assert content == b"1"


def test_command_line_emulator_is_controlled_over_http():
    proc = subprocess.Popen([sys.executable, "-m", "aiofs.testing.drive_emulator", "--port", "0",
                             "--exit-after", "60"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" at ", 1)[1].strip()

        def post(path, body):
            req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())

        from aiofs.backends.drive import DriveBackend

        tokens = post("/_emulator/token", {"scopes": ["https://www.googleapis.com/auth/drive"]})
        fs = DriveBackend(api_url=url, token_uri=url + "/token", client_id=DEFAULT_CLIENT_ID,
                          client_secret=DEFAULT_CLIENT_SECRET, refresh_token=tokens["refresh_token"],
                          retry_backoff_base=0.001)
        post("/_emulator/faults", {"push": {"kind": "503", "operation": "upload.multipart"}})
        fs.pipe_file("remote.txt", b"over http")
        with urllib.request.urlopen(url + "/_emulator/state", timeout=30) as resp:
            state = json.loads(resp.read())
        assert state["faults_injected"] == {"503": 1}
        assert state["stats"]["upload.multipart"] == 2 and state["duplicates"] == []
        assert sorted(f["path"] for f in state["files"]) == ["AIO", "AIO/remote.txt"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_command_line_emulator_starts_and_stops():
    proc = subprocess.run([sys.executable, "-m", "aiofs.testing.drive_emulator", "--port", "0",
                           "--exit-after", "0.5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Drive v3 emulator at http://127.0.0.1:")
    options = json.loads(proc.stdout.split("\n", 1)[1])
    assert options["refresh_token"] and options["api_url"].startswith("http://127.0.0.1:")


# -- Drive in aiofs stacks -------------------------------------------------------------------------

def test_drive_backend_from_config_and_under_layers(emu, tmp_path):
    from aiofs.layers import Compress
    from aiofs.stack import build_backend

    fs = build_backend({"type": "drive", "root_folder": "cfg", **emu.backend_options()})
    stack = Compress(fs=fs, cache_dir=str(tmp_path / "cache"))
    data = b"compress me " * 10_000
    stack.pipe_file("a.txt", data)
    assert stack.cat_file("a.txt") == data and stack.cat_file("a.txt", 5, 20) == data[5:20]
    assert fs.info("a.txt")["size"] < len(data)
    assert repr(stack) == "Compress(Drive('cfg'))"


def test_overview_shows_the_emulator_quota(emu, tmp_path, monkeypatch):
    from aiofs.backends.drive import DriveBackend
    from aiofs.layer import Layer
    from aiofs.optimize.overview import overview

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    emu.set_quota(10 * 1024 ** 3)
    fs = DriveBackend(**emu.backend_options(root_folder="ov"))
    fs.pipe_file("photos/a.jpg", b"\xff\xd8\xff" + b"x" * 997)
    expected = fs.storage_quota()
    data = overview(Layer(fs=fs), history=str(tmp_path / "history.db"))
    drive = data["google_drive"]
    assert drive["connected"] is True
    assert drive["quota"]["limit"] == 10 * 1024 ** 3 == expected["limit"]
    assert drive["quota"]["usage"] == expected["usage"] > 0
    assert drive["quota"]["usage_percentage"] == pytest.approx(100 * expected["usage"] / expected["limit"])
    assert drive["usage_in_drive_trash"] == 0
    assert data["local_storage"]["files"] == 1


def test_dedupe_merge_makes_drive_names_unique(emu, tmp_path, monkeypatch):
    import warnings

    from aiofs.backends.drive import DriveBackend
    from aiofs.layer import Layer
    from aiofs.optimize.duplicates import merge_duplicates

    fs = DriveBackend(**emu.backend_options(root_folder="dd"))
    root = fs.info("/")["id"]
    for content in (b"same", b"same", b"other"):
        emu.add_file("twice.txt", content, parent_id=root, by_app=True)
    fs.invalidate_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = merge_duplicates(Layer(fs=fs))
    names = result["duplicate_names"]
    assert names["merged"] == 2
    assert sorted(a["action"] for a in names["actions"]) == ["rename", "trash"]
    assert emu.duplicates() == []
    assert sorted(fs.ls("/", detail=False)) == ["/twice (2).txt", "/twice.txt"]
    assert fs.cat_file("twice (2).txt") == b"other"


class TestCompressOverDriveConformance(ConformanceSuite):
    """A layer over Drive keeps the whole contract (hidden internals, logical sizes, ranges)."""

    @pytest.fixture(autouse=True)
    def _emulator(self, emu):
        self.emulator = emu

    def make_fs(self, tmp_path):
        import uuid

        from aiofs.backends.drive import DriveBackend
        from aiofs.layers import Compress

        drive = DriveBackend(**self.emulator.backend_options(root_folder=f"c-{uuid.uuid4().hex[:8]}"))
        return Compress(fs=drive, cache_dir=str(tmp_path / "cache")), "/"


class TestDedupOverDriveConformance(ConformanceSuite):
    """Dedup(Compress(Drive)): packs, indexes and lock objects live in Drive files."""

    own_internal_prefixes = (".aiofs/dedup",)

    @pytest.fixture(autouse=True)
    def _emulator(self, emu):
        self.emulator = emu

    def make_fs(self, tmp_path):
        import uuid

        from aiofs.backends.drive import DriveBackend
        from aiofs.layers import Compress, Dedup

        drive = DriveBackend(**self.emulator.backend_options(root_folder=f"d-{uuid.uuid4().hex[:8]}"))
        return Dedup(fs=Compress(fs=drive, cache_dir=str(tmp_path / "compress")),
                     cache_dir=str(tmp_path / "dedup")), "/"
