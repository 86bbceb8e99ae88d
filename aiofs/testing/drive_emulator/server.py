"""The Drive v3 emulator's server: state, request handlers, OAuth endpoints, fault injection.

Contract (what a client correct against this is correct against, see NOTES.md "Google
Drive v3"):

* Everything lives in memory, in one asyncio loop (the handlers never block). Paths:
  ``/drive/v3/...`` (files, about, changes, revisions, export, generateIds),
  ``/upload/drive/v3/files`` (``uploadType=media|multipart|resumable``), OAuth at
  ``/o/oauth2/auth`` (consents and redirects at once), ``/token`` and ``/revoke``.
* Drive's documented behaviour: int64 values as strings; ``fields`` masks checked (unknown
  field: 400); ``q`` grammar with case-insensitive ``name =``; pages that sometimes come
  back short; only ``files.generateIds`` ids may be given on create and copy (not for Google
  Workspace types), and once used a retry gets 409 instead of a duplicate; one parent per file, ``parents`` in an update
  body is a 403 (use ``addParents``/``removeParents``); resumable uploads with the 256 KiB
  rule, 308 + ``Range``, sometimes keeping fewer bytes than sent, 201 on create and 200 on
  update, 404 once a session is gone; ``Range`` downloads (206/416); Google Docs, Sheets and
  Slides with no size that download only through ``export``; ``about`` needs ``fields``;
  revisions (``keepForever``); ``changes`` with page tokens; ``storageQuotaExceeded`` when an
  upload would pass the quota; access tokens that expire (401 ``authError``).
* Fault injection (:class:`Faults`) is decided per request, before the handler runs
  (``rate_limit``, ``429``, ``500``, ``503``, ``drop``) or, for a share of changing
  requests, *after* the change was made (``500``, ``503``, ``drop``: the client never hears
  that it worked, which is how retries create duplicates on the real service). Resumable
  chunks may be cut off half way (``drop``: the server keeps what it read, rounded down to
  256 KiB) or find the session gone (``session_lost``).
* ``stats`` counts requests per operation (``files.list``, ``upload.resumable.chunk``...)
  and ``upload_bytes`` the body bytes uploads delivered, for tests and benchmarks. A server
  run with ``python -m`` is controlled over HTTP under ``/_emulator/`` (not part of Drive):
  ``GET state``, ``POST reset``, ``POST faults``, ``POST token``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime
import hashlib
import io
import json
import random
import secrets
import time
import urllib.parse
import zipfile
from typing import Any

from aiohttp import web

from aiofs.testing.drive_emulator.query import QueryError, apply_fields, parse_fields, parse_query

FOLDER = "application/vnd.google-apps.folder"
NATIVE_TYPES = {
    "application/vnd.google-apps.document": {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
        "application/pdf": "pdf", "text/plain": "txt",
        "application/vnd.oasis.opendocument.text": "odt"},
    "application/vnd.google-apps.spreadsheet": {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
        "application/pdf": "pdf", "text/csv": "csv"},
    "application/vnd.google-apps.presentation": {
        "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
        "application/pdf": "pdf", "text/plain": "txt"},
    "application/vnd.google-apps.drawing": {"application/pdf": "pdf", "image/png": "png"},
}
CHUNK_UNIT = 256 * 1024
SCOPE_DRIVE = "https://www.googleapis.com/auth/drive"
SCOPE_FILE = "https://www.googleapis.com/auth/drive.file"
DEFAULT_CLIENT_ID = "aiofs-emulator-client.apps.googleusercontent.com"
DEFAULT_CLIENT_SECRET = "aiofs-emulator-secret"
FAULT_KINDS = ("rate_limit", "429", "500", "503", "drop", "session_lost", "quota")
_MUTATING = {"POST", "PATCH", "PUT", "DELETE"}
# per-request values the middleware hands to the handlers
OP = web.RequestKey("op", str)
TOKEN = web.RequestKey("token", dict)
DROP_MIDWAY = web.RequestKey("drop_midway", bool)


def rfc3339(t: float) -> str:
    """Drive's timestamp format: UTC with milliseconds."""
    dt = datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def error_response(status: int, reason: str, message: str, location: str | None = None,
                   headers: dict | None = None) -> web.Response:
    """Drive's error body: ``{"error": {"errors": [{"reason"...}], "code", "message"}}``."""
    item = {"domain": "global", "reason": reason, "message": message}
    if location:
        item.update(locationType="parameter", location=location)
    body = {"error": {"errors": [item], "code": status, "message": message}}
    return web.json_response(body, status=status, headers=headers)


class DriveError(Exception):
    """Raised inside handlers; turned into Drive's error body by the middleware."""

    def __init__(self, status: int, reason: str, message: str, location: str | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.location = status, reason, message, location

    def response(self) -> web.Response:
        """The HTTP response for this error."""
        return error_response(self.status, self.reason, self.message, self.location)


class DroppedConnection(Exception):
    """Raised by a handler that closed the client's connection on purpose."""


class Faults:
    """Fault injection settings; change them from tests at any time.

    ``rate``: share of Drive requests (``/drive``, ``/upload``) that fail; ``kinds``: what a
    failure is, drawn uniformly; ``after_commit``: share of failures of changing requests
    (``500``/``503``/``drop`` kinds) applied after the change was made; ``seed`` makes the
    sequence repeatable. :meth:`push` queues scripted faults for the next matching requests;
    :meth:`drop_upload_at` cuts the resumable chunk that crosses a byte offset.
    """

    def __init__(self, rate: float = 0.0, kinds=("rate_limit", "429", "500", "503", "drop"),
                 after_commit: float = 0.5, seed: int = 0):
        self.configure(rate, kinds, after_commit, seed)
        self.scripted: list[dict] = []
        self.drop_at: int | None = None
        self.injected: collections.Counter[str] = collections.Counter()

    def configure(self, rate: float = 0.0, kinds=("rate_limit", "429", "500", "503", "drop"),
                  after_commit: float = 0.5, seed: int | None = None) -> None:
        """Set the random fault rate and kinds (``rate=0`` turns random faults off)."""
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {FAULT_KINDS}")
        self.rate = float(rate)
        self.kinds = tuple(kinds)
        self.after_commit = float(after_commit)
        if seed is not None or not hasattr(self, "rng"):
            self.rng = random.Random(seed or 0)

    def push(self, kind: str, operation: str | None = None, count: int = 1,
             after: bool = False) -> None:
        """Fail the next ``count`` requests of ``operation`` (any when ``None``) with ``kind``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        for _ in range(count):
            self.scripted.append({"kind": kind, "operation": operation, "after": after})

    def drop_upload_at(self, offset: int) -> None:
        """Cut the connection of the resumable chunk that carries byte ``offset``."""
        self.drop_at = int(offset)

    def decide(self, operation: str, method: str) -> tuple[str, bool] | None:
        """``(kind, after_commit)`` for this request, or ``None``."""
        for i, item in enumerate(self.scripted):
            if item["operation"] in (None, operation):
                del self.scripted[i]
                return item["kind"], item["after"]
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return None
        choices = [k for k in self.kinds
                   if k != "session_lost" or operation == "upload.resumable.chunk"]
        if operation not in ("upload.media", "upload.multipart", "upload.resumable.chunk",
                             "upload.resumable.start", "files.create", "files.copy"):
            choices = [k for k in choices if k != "quota"]
        if not choices:
            return None
        kind = self.rng.choice(choices)
        after = (method in _MUTATING and kind in ("500", "503", "drop")
                 and self.rng.random() < self.after_commit)
        return kind, after


class DriveState:
    """Files, upload sessions, tokens, change log and counters of one emulated account."""

    def __init__(self, base_url: str = "", quota_limit: int | None = 15 * 1024 ** 3,
                 token_lifetime: float = 3600.0, latency: float = 0.0,
                 short_page_rate: float = 0.1, partial_keep_rate: float = 0.1,
                 max_revisions: int = 100, seed: int = 0):
        self.base_url = base_url
        self.quota_limit = quota_limit
        self.token_lifetime = float(token_lifetime)
        self.latency = float(latency)
        self.short_page_rate = float(short_page_rate)
        self.partial_keep_rate = float(partial_keep_rate)
        self.max_revisions = int(max_revisions)
        self.rng = random.Random(seed)
        self.faults = Faults(seed=seed)
        self.stats: collections.Counter[str] = collections.Counter()
        self.upload_bytes = 0
        self.bytes_used = 0  # every stored revision, kept up to date (quota checks are O(1))
        self.consent = "allow"
        self.files: dict[str, dict] = {}
        self.root_id = "0AEmulatedRootFolderXYZ"
        self._clock = 0.0
        now = self.now()
        self.files[self.root_id] = {
            "id": self.root_id, "name": "My Drive", "mimeType": FOLDER, "parents": [],
            "trashed": False, "createdTime": now, "modifiedTime": now, "version": 1,
            "content": None, "revisions": [], "app_created": True, "description": "",
            "native_text": None, "trashedTime": None, "appProperties": {},
        }
        self.generated: set[str] = set()
        self.sessions: dict[str, dict] = {}
        self.changes: list[dict] = []
        self.clients = {DEFAULT_CLIENT_ID: {"secret": DEFAULT_CLIENT_SECRET, "redirect_uris": []}}
        self.codes: dict[str, dict] = {}
        self.access_tokens: dict[str, dict] = {}
        self.refresh_tokens: dict[str, dict] = {}
        self.service_accounts: dict[str, Any] = {}
        self.user = {"kind": "drive#user", "displayName": "Emulated User",
                     "emailAddress": "user@example.com", "permissionId": "0123456789", "me": True}

    # -- small helpers -----------------------------------------------------------------------

    def now(self) -> float:
        """Wall time, strictly increasing (two edits never share a modifiedTime)."""
        self._clock = max(time.time(), self._clock + 0.001)
        return self._clock

    def new_id(self) -> str:
        """A random file id in Drive's alphabet."""
        return "1" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")[:32]

    def record_change(self, file_id: str, removed: bool = False) -> None:
        """Append a change for ``changes.list``."""
        self.changes.append({"seq": len(self.changes) + 1, "fileId": file_id,
                             "time": self.now(), "removed": removed})

    def is_trashed(self, f: dict) -> bool:
        """Trashed itself or below a trashed folder (Drive's effective ``trashed``)."""
        seen = 0
        while f is not None and seen < 1000:
            if f["trashed"]:
                return True
            parent = f["parents"][0] if f["parents"] else None
            f = self.files.get(parent) if parent else None
            seen += 1
        return False

    def ancestors(self, file_id: str) -> list[str]:
        """Folder ids from the parent up to the root."""
        out, f = [], self.files.get(file_id)
        while f is not None and f["parents"]:
            out.append(f["parents"][0])
            f = self.files.get(f["parents"][0])
        return out

    def visible(self, f: dict, token: dict | None) -> bool:
        """With only the ``drive.file`` scope, a client sees the files apps created."""
        if token is None or SCOPE_DRIVE in token["scopes"] or f["id"] == self.root_id:
            return True
        return f["app_created"]

    def file_size(self, f: dict) -> int:
        """Bytes of the head revision (0 for folders and Workspace files)."""
        return len(f["content"]) if f["content"] is not None else 0

    def usage(self) -> tuple[int, int]:
        """(total bytes incl. old revisions, bytes of trashed files)."""
        trash = 0
        for f in self.files.values():
            if f["revisions"] and self.is_trashed(f):
                trash += sum(len(r["content"]) for r in f["revisions"])
        return self.bytes_used, trash

    def check_quota(self, extra: int) -> None:
        """Raise ``storageQuotaExceeded`` when ``extra`` more bytes would pass the limit."""
        if self.quota_limit is None:
            return
        if self.bytes_used + extra > self.quota_limit:
            raise DriveError(403, "storageQuotaExceeded",
                             "The user's Drive storage quota has been exceeded.")

    def get(self, file_id: str, token: dict | None = None) -> dict:
        """The file with this id (``root`` works) visible to ``token``, or 404."""
        if file_id == "root":
            file_id = self.root_id
        f = self.files.get(file_id)
        if f is None or not self.visible(f, token):
            raise DriveError(404, "notFound", f"File not found: {file_id}.", "fileId")
        return f

    def snapshot(self, trashed: bool = False) -> list[dict]:
        """Every file but the root: ``id, name, mimeType, parent, trashed, size, md5, path``."""
        out = []
        for f in self.files.values():
            if f["id"] == self.root_id:
                continue
            is_trashed = self.is_trashed(f)
            if is_trashed and not trashed:
                continue
            names, cur = [f["name"]], f
            while cur["parents"] and cur["parents"][0] != self.root_id:
                cur = self.files[cur["parents"][0]]
                names.append(cur["name"])
            out.append({"id": f["id"], "name": f["name"], "mimeType": f["mimeType"],
                        "parent": f["parents"][0] if f["parents"] else None,
                        "trashed": is_trashed, "size": self.file_size(f), "md5": f.get("md5"),
                        "path": "/".join(reversed(names)), "revisions": len(f["revisions"])})
        return out

    def duplicates(self) -> list[tuple[str, str]]:
        """``(parent id, name)`` pairs held by more than one live file."""
        seen: dict[tuple[str, str], int] = {}
        for f in self.snapshot():
            key = (f["parent"], f["name"])
            seen[key] = seen.get(key, 0) + 1
        return sorted(k for k, n in seen.items() if n > 1)

    # -- rendering ---------------------------------------------------------------------------

    def render(self, f: dict, with_sha: bool = True) -> dict:
        """The full ``drive#file`` resource (int64 values as strings)."""
        out = {
            "kind": "drive#file", "id": f["id"], "name": f["name"], "mimeType": f["mimeType"],
            "trashed": self.is_trashed(f), "explicitlyTrashed": bool(f["trashed"]),
            "createdTime": rfc3339(f["createdTime"]), "modifiedTime": rfc3339(f["modifiedTime"]),
            "version": str(f["version"]), "starred": False, "ownedByMe": True,
            "viewedByMe": True, "description": f["description"],
            "appProperties": dict(f["appProperties"]), "properties": {},
            "webViewLink": f"{self.base_url}/file/d/{f['id']}/view",
            "capabilities": {"canEdit": True, "canDownload": f["mimeType"] != FOLDER,
                             "canCopy": f["mimeType"] != FOLDER, "canTrash": True,
                             "canDelete": True},
        }
        if f["parents"]:
            out["parents"] = list(f["parents"])
        if f["trashedTime"] is not None and f["trashed"]:
            out["trashedTime"] = rfc3339(f["trashedTime"])
        if f["content"] is not None:
            content = f["content"]
            out["size"] = str(len(content))
            out["quotaBytesUsed"] = str(len(content))
            out["md5Checksum"] = f["md5"]
            if with_sha:  # costly on big files: only when the mask asks for them
                if f.get("sha") is None:
                    f["sha"] = _shas(content)
                out["sha1Checksum"], out["sha256Checksum"] = f["sha"]
            out["headRevisionId"] = f["revisions"][-1]["id"]
            out["originalFilename"] = f["name"]
            if "." in f["name"]:
                out["fileExtension"] = f["name"].rsplit(".", 1)[1]
                out["fullFileExtension"] = f["name"].split(".", 1)[1]
        elif f["mimeType"] in NATIVE_TYPES:
            out["quotaBytesUsed"] = "0"
            out["exportLinks"] = {
                mime: f"{self.base_url}/drive/v3/files/{f['id']}/export?mimeType="
                      f"{urllib.parse.quote(mime)}" for mime in NATIVE_TYPES[f["mimeType"]]}
        else:
            out["quotaBytesUsed"] = "0"
        return out

    def render_revision(self, r: dict, f: dict) -> dict:
        """The ``drive#revision`` resource."""
        return {"kind": "drive#revision", "id": r["id"], "mimeType": f["mimeType"],
                "modifiedTime": rfc3339(r["modifiedTime"]), "keepForever": r["keepForever"],
                "md5Checksum": r["md5"], "size": str(len(r["content"])),
                "originalFilename": f["name"], "published": False}

    def query_view(self, f: dict) -> dict:
        """The fields ``q`` expressions look at."""
        parents = list(f["parents"])
        if self.root_id in parents:
            parents.append("root")  # the alias works in queries too
        return {"name": f["name"], "mimeType": f["mimeType"], "parents": parents,
                "trashed": self.is_trashed(f), "starred": False,
                "modifiedTime": f["modifiedTime"], "createdTime": f["createdTime"]}

    # -- mutations ---------------------------------------------------------------------------

    def _claim_id(self, wanted: str | None) -> str:
        if wanted is None:
            return self.new_id()
        if wanted in self.files:
            raise DriveError(409, "duplicate", "A file already exists with the provided ID.", "id")
        if wanted not in self.generated:
            raise DriveError(400, "invalid", "The provided file ID is not usable.", "id")
        self.generated.discard(wanted)
        return wanted

    def _parent_for_create(self, meta: dict, token) -> list[str]:
        parents = meta.get("parents") or [self.root_id]
        if not isinstance(parents, list):
            raise DriveError(400, "invalid", "Invalid value for parents.", "parents")
        if len(parents) > 1:
            raise DriveError(403, "cannotAddParent",
                             "Increasing the number of parents is not allowed.")
        parent = self.get(parents[0], token)
        if parent["mimeType"] != FOLDER:
            raise DriveError(400, "invalid", "The parent is not a folder.", "parents")
        return [parent["id"]]

    def new_revision(self, f: dict, content: bytes) -> None:
        """Record ``content`` as the new head revision (pruning old unpinned ones)."""
        self.bytes_used += len(content)
        f["revisions"].append({"id": f"0B{f['id'][:8]}{f['version']:06d}", "content": content,
                               "md5": hashlib.md5(content).hexdigest(),
                               "modifiedTime": f["modifiedTime"], "keepForever": False})
        # Drive keeps a bounded number of unpinned revisions: prune the oldest.
        unpinned = [r for r in f["revisions"][:-1] if not r["keepForever"]]
        while len(unpinned) + 1 > self.max_revisions:
            pruned = unpinned.pop(0)
            f["revisions"].remove(pruned)
            self.bytes_used -= len(pruned["content"])

    def create(self, meta: dict, content: bytes | None, token) -> dict:
        """files.create (with or without media)."""
        if "parents" in meta and meta["parents"] is None:
            meta.pop("parents")
        mime = meta.get("mimeType") or ("application/octet-stream" if content is not None
                                         else "application/octet-stream")
        if mime == FOLDER and content:
            raise DriveError(400, "invalid", "Folders cannot have content.")
        parents = self._parent_for_create(meta, token)
        if meta.get("id") is not None and mime in NATIVE_TYPES:
            # as documented: generated ids work for folders and binary files only
            raise DriveError(400, "invalid", "Generated IDs are not supported for Google "
                             "Workspace files.", "id")
        if content is not None and mime not in NATIVE_TYPES and mime != FOLDER:
            self.check_quota(len(content))
        file_id = self._claim_id(meta.get("id"))
        now = self.now()
        created = meta.get("createdTime")
        f = {
            "id": file_id, "name": meta.get("name") or "Untitled", "mimeType": mime,
            "parents": parents, "trashed": False, "trashedTime": None,
            "createdTime": now if not created else _parse_rfc3339(created),
            "modifiedTime": now, "version": 1, "content": None, "revisions": [],
            "app_created": True, "description": meta.get("description") or "",
            "native_text": None, "appProperties": dict(meta.get("appProperties") or {}),
        }
        if mime in NATIVE_TYPES:
            f["native_text"] = (content or b"").decode("utf-8", "replace")
        elif mime != FOLDER:
            f["content"] = content or b""
            f["md5"] = hashlib.md5(f["content"]).hexdigest()
            f["sha"] = None
            self.new_revision(f, f["content"])
        self.files[file_id] = f
        self.record_change(file_id)
        return f

    def update_content(self, f: dict, content: bytes) -> None:
        """Replace the content: a new version and revision."""
        if f["mimeType"] == FOLDER:
            raise DriveError(400, "invalid", "Folders cannot have content.")
        if f["mimeType"] in NATIVE_TYPES:
            f["native_text"] = content.decode("utf-8", "replace")
        else:
            self.check_quota(len(content))
            f["content"] = content
            f["md5"] = hashlib.md5(content).hexdigest()
            f["sha"] = None
        f["version"] += 1
        f["modifiedTime"] = self.now()
        if f["content"] is not None:
            self.new_revision(f, content)

    def update_metadata(self, f: dict, meta: dict, add: str, remove: str, token) -> None:
        """files.update: name, description, trashed, addParents/removeParents."""
        if "parents" in meta:
            raise DriveError(403, "fieldNotWritable",
                             "The resource body includes fields which are not directly writable.")
        for key in ("id", "size", "md5Checksum", "version", "kind"):
            if key in meta:
                raise DriveError(403, "fieldNotWritable",
                                 "The resource body includes fields which are not directly writable.")
        if f["id"] == self.root_id and (meta or add or remove):
            raise DriveError(403, "insufficientFilePermissions", "The root folder cannot be changed.")
        add_ids = [p for p in (add or "").split(",") if p]
        remove_ids = [p for p in (remove or "").split(",") if p]
        new_parents = [p for p in f["parents"] if p not in remove_ids]
        for pid in add_ids:
            parent = self.get(pid, token)
            if parent["mimeType"] != FOLDER:
                raise DriveError(400, "invalid", "The parent is not a folder.", "addParents")
            if pid == f["id"] or f["id"] in self.ancestors(pid):
                raise DriveError(400, "invalid", "A folder cannot be moved into itself.", "addParents")
            if parent["id"] not in new_parents:
                new_parents.append(parent["id"])
        if len(new_parents) > 1:
            raise DriveError(403, "cannotAddParent",
                             "Increasing the number of parents is not allowed.")
        if not new_parents and f["parents"]:
            raise DriveError(403, "cannotRemoveParent", "A file needs a parent.")
        f["parents"] = new_parents
        if "name" in meta:
            if not meta["name"]:
                raise DriveError(400, "invalid", "A name is required.", "name")
            f["name"] = meta["name"]
        if "description" in meta:
            f["description"] = meta["description"] or ""
        if "appProperties" in meta:
            f["appProperties"].update(meta["appProperties"] or {})
        if "trashed" in meta:
            f["trashed"] = bool(meta["trashed"])
            f["trashedTime"] = self.now() if f["trashed"] else None
        if "modifiedTime" in meta and meta["modifiedTime"]:
            f["modifiedTime"] = _parse_rfc3339(meta["modifiedTime"])
        else:
            f["modifiedTime"] = self.now()
        f["version"] += 1
        self.record_change(f["id"])

    def delete(self, f: dict) -> None:
        """Permanent delete; a folder takes its descendants with it."""
        if f["id"] == self.root_id:
            raise DriveError(403, "insufficientFilePermissions", "The root folder cannot be deleted.")
        doomed = {f["id"]}
        changed = True
        while changed:
            changed = False
            for other in self.files.values():
                if other["id"] not in doomed and other["parents"] and other["parents"][0] in doomed:
                    doomed.add(other["id"])
                    changed = True
        for file_id in doomed:
            self.bytes_used -= sum(len(r["content"]) for r in self.files[file_id]["revisions"])
            del self.files[file_id]
            self.record_change(file_id, removed=True)

    # -- exports -------------------------------------------------------------------------------

    def export_bytes(self, f: dict, mime: str) -> bytes:
        """The export of a Workspace file in ``mime`` (400 if unsupported)."""
        formats = NATIVE_TYPES.get(f["mimeType"])
        if formats is None:
            raise DriveError(403, "fileNotExportable", "Export only supports Docs Editors files.")
        if mime not in formats:
            raise DriveError(400, "badRequest", "The requested conversion is not supported.",
                             "convertTo")
        text = f["native_text"] or ""
        ext = formats[mime]
        if ext in ("txt", "csv"):
            return text.encode("utf-8")
        if ext == "pdf":
            return (b"%PDF-1.4\n% aiofs emulator export\n1 0 obj << /Title (" + f["name"].encode()
                    + b") >> endobj\n" + text.encode("utf-8") + b"\n%%EOF\n")
        if ext == "png":
            return b"\x89PNG\r\n\x1a\n" + hashlib.sha256(text.encode()).digest()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in (("[Content_Types].xml", f"<Types ext='{ext}'/>"),
                               (f"content/{ext}.xml", f"<doc><t>{text}</t></doc>")):
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                z.writestr(info, data)
        return buf.getvalue()


def _shas(content: bytes) -> tuple[str, str]:
    """(sha1, sha256) of a file's content, computed once per revision."""
    return hashlib.sha1(content).hexdigest(), hashlib.sha256(content).hexdigest()


def _parse_rfc3339(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        raise DriveError(400, "invalid", f"Invalid date-time {text!r}.") from None


def _page_token(offset: int, salt: str) -> str:
    return base64.urlsafe_b64encode(f"{offset}:{salt}".encode()).decode().rstrip("=")


def _page_offset(token: str | None, salt: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        offset, got = text.split(":", 1)
        if got != salt:
            raise ValueError
        return int(offset)
    except (ValueError, UnicodeDecodeError):
        raise DriveError(400, "invalid", "Invalid Value", "pageToken") from None


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[dict, bytes]]:
    """``multipart/related`` parts as ``(headers, content)``; LF or CRLF line endings."""
    delim = b"--" + boundary
    start = body.find(delim)
    if start < 0:
        raise DriveError(400, "badContent", "Malformed multipart body.")
    pos = start + len(delim)
    parts = []
    while True:
        if body[pos:pos + 2] == b"--":
            break
        eol = body.find(b"\n", pos)
        if eol < 0:
            raise DriveError(400, "badContent", "Malformed multipart body.")
        pos = eol + 1
        headers = {}
        while True:
            eol = body.find(b"\n", pos)
            if eol < 0:
                raise DriveError(400, "badContent", "Malformed multipart body.")
            line = body[pos:eol].rstrip(b"\r")
            pos = eol + 1
            if not line:
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        nxt = body.find(b"\n" + delim, pos)
        if nxt < 0:
            raise DriveError(400, "badContent", "Malformed multipart body: no closing boundary.")
        end = nxt - 1 if nxt > 0 and body[nxt - 1:nxt] == b"\r" else nxt
        end = max(end, pos)
        parts.append((headers, body[pos:end]))
        pos = nxt + 1 + len(delim)
    return parts


def _json_body(raw: bytes) -> dict:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise DriveError(400, "parseError", "Parse Error") from None
    if not isinstance(value, dict):
        raise DriveError(400, "parseError", "Parse Error")
    return value


def _fields(request: web.Request, resource: str):
    try:
        return parse_fields(request.query.get("fields"), resource)
    except QueryError as exc:
        raise DriveError(400, "invalidParameter", str(exc), "fields") from None


_DEFAULT_FILE_MASK = {"kind": None, "id": None, "name": None, "mimeType": None}


def _file_json(state: DriveState, f: dict, mask) -> dict:
    with_sha = mask is not None and bool({"*", "sha1Checksum", "sha256Checksum"} & set(mask))
    return apply_fields(state.render(f, with_sha), _DEFAULT_FILE_MASK if mask is None else mask)


def _operation(request: web.Request) -> str:
    """A short name for the request, used for stats and scripted faults."""
    path, method, query = request.path, request.method, request.query
    if path.startswith("/upload/"):
        kind = query.get("uploadType", "media")
        if kind == "resumable":
            return "upload.resumable.chunk" if "upload_id" in query else "upload.resumable.start"
        return f"upload.{kind}"
    if path.startswith("/drive/v3/"):
        rest = path[len("/drive/v3/"):].split("/")
        if rest[0] == "files":
            if len(rest) == 1:
                return "files.list" if method == "GET" else "files.create"
            if rest[1] == "generateIds":
                return "files.generateIds"
            if rest[1] == "trash":
                return "files.emptyTrash"
            if len(rest) == 2:
                if method == "GET":
                    return "files.download" if query.get("alt") == "media" else "files.get"
                return {"PATCH": "files.update", "DELETE": "files.delete"}.get(method, "files.other")
            if rest[2] == "copy":
                return "files.copy"
            if rest[2] == "export":
                return "files.export"
            if rest[2] == "revisions":
                return f"revisions.{ {'GET': 'get', 'PATCH': 'update', 'DELETE': 'delete'}.get(method, 'other')}"
        if rest[0] == "about":
            return "about.get"
        if rest[0] == "changes":
            return "changes.getStartPageToken" if rest[-1] == "startPageToken" else "changes.list"
        return "drive.other"
    if path.startswith("/o/oauth2"):
        return "oauth.authorize"
    if path == "/token":
        return "oauth.token"
    if path == "/revoke":
        return "oauth.revoke"
    return "other"


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()
    raise DroppedConnection()


def build_app(state: DriveState) -> web.Application:
    """The aiohttp application serving ``state``."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        """Counts, latency, authentication and fault injection around every handler."""
        op = _operation(request)
        request[OP] = op
        state.stats[op] += 1
        if state.latency:
            await asyncio.sleep(state.latency)
        try:
            if not request.path.startswith(("/drive/", "/upload/")):
                return await handler(request)
            request[TOKEN] = _authorize(state, request)
            fault = state.faults.decide(op, request.method)
            if fault is not None:
                kind, after = fault
                state.faults.injected[kind] += 1
                if kind == "session_lost" and op != "upload.resumable.chunk":
                    kind = "503"
                if kind == "drop" and op == "upload.resumable.chunk" and not after:
                    request[DROP_MIDWAY] = True
                elif not after:
                    if op.startswith("upload."):
                        state.upload_bytes += len(await request.read())
                    return _fault_response(request, kind)
                else:
                    response = await handler(request)
                    if response.status >= 400:
                        return response
                    return _fault_response(request, kind)
            return await handler(request)
        except DriveError as exc:
            return exc.response()
        except DroppedConnection:
            return web.Response(status=500)

    def _fault_response(request, kind: str) -> web.Response:
        if kind == "drop":
            _drop(request)
        if kind == "rate_limit":
            reason = state.faults.rng.choice(["userRateLimitExceeded", "rateLimitExceeded"])
            return error_response(403, reason, "Rate Limit Exceeded")
        if kind == "429":
            return error_response(429, "rateLimitExceeded", "Too Many Requests")
        if kind == "quota":
            return error_response(403, "storageQuotaExceeded",
                                  "The user's Drive storage quota has been exceeded.")
        if kind == "session_lost":
            return error_response(404, "notFound", "Upload session not found.")
        return error_response(int(kind), "backendError", "Backend Error")

    h = _Handlers(state)
    app = web.Application(middlewares=[middleware], client_max_size=1024 ** 4)
    r = app.router
    r.add_get("/drive/v3/files/generateIds", h.generate_ids)
    r.add_delete("/drive/v3/files/trash", h.empty_trash)
    r.add_get("/drive/v3/files", h.list_files)
    r.add_post("/drive/v3/files", h.create_metadata)
    r.add_get("/drive/v3/files/{id}", h.get_file)
    r.add_patch("/drive/v3/files/{id}", h.update_file)
    r.add_delete("/drive/v3/files/{id}", h.delete_file)
    r.add_post("/drive/v3/files/{id}/copy", h.copy_file)
    r.add_get("/drive/v3/files/{id}/export", h.export_file)
    r.add_get("/drive/v3/files/{id}/revisions", h.list_revisions)
    r.add_get("/drive/v3/files/{id}/revisions/{rid}", h.get_revision)
    r.add_patch("/drive/v3/files/{id}/revisions/{rid}", h.update_revision)
    r.add_delete("/drive/v3/files/{id}/revisions/{rid}", h.delete_revision)
    r.add_get("/drive/v3/about", h.about)
    r.add_get("/drive/v3/changes/startPageToken", h.start_page_token)
    r.add_get("/drive/v3/changes", h.list_changes)
    r.add_post("/upload/drive/v3/files", h.upload)
    r.add_patch("/upload/drive/v3/files/{id}", h.upload)
    r.add_put("/upload/drive/v3/files", h.upload_chunk)
    r.add_put("/upload/drive/v3/files/{id}", h.upload_chunk)
    r.add_delete("/upload/drive/v3/files", h.cancel_upload)
    r.add_delete("/upload/drive/v3/files/{id}", h.cancel_upload)
    r.add_get("/_emulator/state", h.control_state)
    r.add_post("/_emulator/reset", h.control_reset)
    r.add_post("/_emulator/faults", h.control_faults)
    r.add_post("/_emulator/token", h.control_token)
    r.add_get("/o/oauth2/auth", h.authorize)
    r.add_get("/o/oauth2/v2/auth", h.authorize)
    r.add_post("/token", h.token)
    r.add_post("/revoke", h.revoke)
    return app


def _authorize(state: DriveState, request: web.Request) -> dict:
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token")
    record = state.access_tokens.get(token or "")
    if record is None or record["expires"] <= time.time():
        raise DriveError401()
    return record


class DriveError401(DriveError):
    """401 ``authError`` with Drive's ``WWW-Authenticate`` header."""
    def __init__(self):
        super().__init__(401, "authError", "Invalid Credentials", None)

    def response(self) -> web.Response:
        """The HTTP response for this error."""
        body = {"error": {"errors": [{"domain": "global", "reason": "authError",
                                      "message": "Invalid Credentials", "locationType": "header",
                                      "location": "Authorization"}],
                          "code": 401, "message": "Invalid Credentials"}}
        return web.json_response(body, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})


class _Handlers:
    def __init__(self, state: DriveState):
        self.s = state

    # -- files ---------------------------------------------------------------------------------

    async def generate_ids(self, request):
        """files.generateIds."""
        try:
            count = int(request.query.get("count", "10"))
        except ValueError:
            raise DriveError(400, "invalid", "Invalid count.", "count") from None
        if not 1 <= count <= 1000:
            raise DriveError(400, "invalid", "count must be between 1 and 1000.", "count")
        ids = [self.s.new_id() for _ in range(count)]
        self.s.generated.update(ids)
        body = {"kind": "drive#generatedIds", "space": "drive", "ids": ids}
        return web.json_response(apply_fields(body, _fields(request, "generatedIds")))

    async def empty_trash(self, request):
        """files.emptyTrash."""
        for f in [f for f in self.s.files.values() if f["trashed"] and f["id"] in self.s.files]:
            if f["id"] in self.s.files:
                self.s.delete(f)
        return web.Response(status=204)

    async def list_files(self, request):
        """files.list: ``q``, ``orderBy``, paging (sometimes short), ``fields``."""
        s = self.s
        mask = _fields(request, "fileList")
        q = request.query.get("q", "")
        try:
            predicate = parse_query(q)
        except QueryError as exc:
            raise DriveError(400, "invalid", str(exc), "q") from None
        try:
            page_size = int(request.query.get("pageSize", "100"))
        except ValueError:
            raise DriveError(400, "invalid", "Invalid pageSize.", "pageSize") from None
        if not 1 <= page_size <= 1000:
            raise DriveError(400, "invalid", "pageSize must be between 1 and 1000.", "pageSize")
        token = request[TOKEN]
        matches = [f for f in s.files.values()
                   if f["id"] != s.root_id and s.visible(f, token) and predicate(s.query_view(f))]
        matches.sort(key=_order_key(request.query.get("orderBy")))
        salt = hashlib.sha1(f"{q}|{request.query.get('orderBy')}".encode()).hexdigest()[:8]
        offset = _page_offset(request.query.get("pageToken"), salt)
        count = page_size
        if s.short_page_rate and s.rng.random() < s.short_page_rate and page_size > 1:
            count = s.rng.randint(1, page_size - 1)  # Drive may return fewer than asked
        page = matches[offset:offset + count]
        body: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False}
        if offset + count < len(matches):
            body["nextPageToken"] = _page_token(offset + count, salt)
        file_mask = None
        if mask is not None and "files" in mask:
            file_mask = mask["files"]
        elif mask is not None and "*" in mask:
            file_mask = {"*": None}
        body["files"] = [_file_json(s, f, file_mask) for f in page]
        if mask is None:
            body = {k: v for k, v in body.items()
                    if k in ("kind", "incompleteSearch", "nextPageToken", "files")}
        else:
            body = apply_fields(body, {k: None for k in mask} if "*" not in mask else mask)
        return web.json_response(body)

    async def create_metadata(self, request):
        """files.create without media (folders, empty files)."""
        meta = _json_body(await request.read())
        f = self.s.create(meta, None, request[TOKEN])
        return web.json_response(_file_json(self.s, f, _fields(request, "file")))

    async def get_file(self, request):
        """files.get, or the content with ``alt=media`` (``Range`` honoured)."""
        s = self.s
        f = s.get(request.match_info["id"], request[TOKEN])
        if request.query.get("alt") == "media":
            if f["content"] is None:
                if f["mimeType"] in NATIVE_TYPES:
                    raise DriveError(403, "fileNotDownloadable",
                                     "Only files with binary content can be downloaded. "
                                     "Use Export with Docs Editors files.", "alt")
                raise DriveError(403, "fileNotDownloadable", "Folders cannot be downloaded.", "alt")
            return _ranged(request, f["content"])
        return web.json_response(_file_json(s, f, _fields(request, "file")))

    async def update_file(self, request):
        """files.update (metadata)."""
        s = self.s
        f = s.get(request.match_info["id"], request[TOKEN])
        meta = _json_body(await request.read())
        s.update_metadata(f, meta, request.query.get("addParents", ""),
                          request.query.get("removeParents", ""), request[TOKEN])
        return web.json_response(_file_json(s, f, _fields(request, "file")))

    async def delete_file(self, request):
        """files.delete (permanent)."""
        f = self.s.get(request.match_info["id"], request[TOKEN])
        self.s.delete(f)
        return web.Response(status=204)

    async def copy_file(self, request):
        """files.copy."""
        s = self.s
        src = s.get(request.match_info["id"], request[TOKEN])
        if src["mimeType"] == FOLDER:
            raise DriveError(403, "cannotCopyFile", "This file cannot be copied by the user.")
        meta = _json_body(await request.read())
        meta.setdefault("name", f"Copy of {src['name']}")
        meta.setdefault("mimeType", src["mimeType"])
        meta.setdefault("parents", list(src["parents"]))
        content = src["content"] if src["content"] is not None else (
            (src["native_text"] or "").encode() if src["mimeType"] in NATIVE_TYPES else None)
        f = s.create(meta, content, request[TOKEN])
        return web.json_response(_file_json(s, f, _fields(request, "file")))

    async def export_file(self, request):
        """files.export."""
        f = self.s.get(request.match_info["id"], request[TOKEN])
        mime = request.query.get("mimeType")
        if not mime:
            raise DriveError(400, "required", "Required parameter: mimeType", "mimeType")
        data = self.s.export_bytes(f, mime)
        return web.Response(body=data, content_type=mime)

    # -- revisions ---------------------------------------------------------------------------

    def _revision(self, request) -> tuple[dict, dict]:
        f = self.s.get(request.match_info["id"], request[TOKEN])
        rid = request.match_info["rid"]
        if rid == "head" and f["revisions"]:
            return f, f["revisions"][-1]
        for r in f["revisions"]:
            if r["id"] == rid:
                return f, r
        raise DriveError(404, "notFound", f"Revision not found: {rid}.", "revisionId")

    async def list_revisions(self, request):
        """revisions.list."""
        f = self.s.get(request.match_info["id"], request[TOKEN])
        if f["mimeType"] == FOLDER:
            raise DriveError(403, "revisionsNotSupported", "The file does not support revisions.")
        body = {"kind": "drive#revisionList",
                "revisions": [self.s.render_revision(r, f) for r in f["revisions"]]}
        mask = _fields(request, "revisionList")
        if mask is None:
            mask = {"kind": None, "revisions": {"kind": None, "id": None, "mimeType": None,
                                                "modifiedTime": None}}
        return web.json_response(apply_fields(body, mask))

    async def get_revision(self, request):
        """revisions.get (``alt=media``: content)."""
        f, r = self._revision(request)
        if request.query.get("alt") == "media":
            return _ranged(request, r["content"])
        mask = _fields(request, "revision") or {"kind": None, "id": None, "mimeType": None,
                                                 "modifiedTime": None}
        return web.json_response(apply_fields(self.s.render_revision(r, f), mask))

    async def update_revision(self, request):
        """revisions.update (``keepForever``)."""
        f, r = self._revision(request)
        meta = _json_body(await request.read())
        if "keepForever" in meta:
            r["keepForever"] = bool(meta["keepForever"])
        mask = _fields(request, "revision") or {"kind": None, "id": None, "mimeType": None,
                                                 "modifiedTime": None}
        return web.json_response(apply_fields(self.s.render_revision(r, f), mask))

    async def delete_revision(self, request):
        """revisions.delete."""
        f, r = self._revision(request)
        if r is f["revisions"][-1]:
            raise DriveError(400, "cannotDeleteOnlyRevision",
                             "The head revision of a file cannot be deleted.")
        f["revisions"].remove(r)
        self.bytes_used -= len(r["content"])
        return web.Response(status=204)

    # -- about and changes -------------------------------------------------------------------

    async def about(self, request):
        """about.get (``fields`` required)."""
        if "fields" not in request.query:
            raise DriveError(400, "required",
                             "The 'fields' parameter is required for this method.", "fields")
        used, trash = self.s.usage()
        quota = {"usage": str(used), "usageInDrive": str(used), "usageInDriveTrash": str(trash)}
        if self.s.quota_limit is not None:
            quota["limit"] = str(self.s.quota_limit)
        body = {"kind": "drive#about", "storageQuota": quota, "user": dict(self.s.user),
                "maxUploadSize": str(5 * 1024 ** 4), "appInstalled": True,
                "importFormats": {}, "exportFormats": {
                    k: list(v) for k, v in NATIVE_TYPES.items()}}
        return web.json_response(apply_fields(body, _fields(request, "about")))

    async def start_page_token(self, request):
        """changes.getStartPageToken."""
        body = {"kind": "drive#startPageToken", "startPageToken": str(len(self.s.changes) + 1)}
        return web.json_response(body)

    async def list_changes(self, request):
        """changes.list."""
        s = self.s
        token = request.query.get("pageToken")
        if not token:
            raise DriveError(400, "required", "Required parameter: pageToken", "pageToken")
        try:
            start = int(token)
        except ValueError:
            raise DriveError(400, "invalid", "Invalid Value", "pageToken") from None
        if start < 1 or start > len(s.changes) + 1:
            raise DriveError(400, "invalid", "Invalid Value", "pageToken")
        page_size = int(request.query.get("pageSize", "100"))
        items = s.changes[start - 1:start - 1 + page_size]
        changes = []
        for c in items:
            f = s.files.get(c["fileId"])
            entry = {"kind": "drive#change", "changeType": "file", "time": rfc3339(c["time"]),
                     "removed": f is None, "fileId": c["fileId"]}
            if f is not None and s.visible(f, request[TOKEN]):
                entry["file"] = s.render(f)
            changes.append(entry)
        body: dict[str, Any] = {"kind": "drive#changeList", "changes": changes}
        nxt = start + len(items)
        if nxt <= len(s.changes):
            body["nextPageToken"] = str(nxt)
        else:
            body["newStartPageToken"] = str(nxt)
        mask = _fields(request, "changeList")
        if mask is None:
            mask = {"kind": None, "nextPageToken": None, "newStartPageToken": None,
                    "changes": {"kind": None, "changeType": None, "time": None, "removed": None,
                                "fileId": None, "file": _DEFAULT_FILE_MASK}}
        return web.json_response(apply_fields(body, mask))

    # -- uploads -------------------------------------------------------------------------------

    async def upload(self, request):
        """POST (create) or PATCH (update) with uploadType media, multipart or resumable."""
        s = self.s
        kind = request.query.get("uploadType")
        file_id = request.match_info.get("id")
        existing = s.get(file_id, request[TOKEN]) if file_id else None
        mask = _fields(request, "file")
        if kind == "resumable":
            meta = _json_body(await request.read())
            if existing is None:
                # Check what a create would check now, not after the whole upload.
                s._parent_for_create(dict(meta), request[TOKEN])
                if meta.get("id") is not None and meta["id"] in s.files:
                    raise DriveError(409, "duplicate", "A file already exists with the provided ID.", "id")
            total = request.headers.get("X-Upload-Content-Length")
            if total is not None and s.quota_limit is not None:
                s.check_quota(int(total))
            upload_id = secrets.token_urlsafe(18)
            s.sessions[upload_id] = {"meta": meta, "file_id": file_id, "received": bytearray(),
                                     "done": None, "mask": mask, "token": request[TOKEN],
                                     "add": request.query.get("addParents", ""),
                                     "remove": request.query.get("removeParents", "")}
            where = f"/upload/drive/v3/files{'/' + file_id if file_id else ''}"
            location = f"{s.base_url}{where}?uploadType=resumable&upload_id={upload_id}"
            return web.Response(status=200, headers={"Location": location})
        body = await request.read()
        s.upload_bytes += len(body)
        if kind == "multipart":
            ctype = request.headers.get("Content-Type", "")
            boundary = _boundary(ctype)
            parts = parse_multipart(body, boundary)
            if len(parts) != 2:
                raise DriveError(400, "badContent", "A multipart upload has exactly two parts.")
            meta, content = _json_body(parts[0][1]), parts[1][1]
        elif kind in (None, "media"):
            meta, content = {}, body
        else:
            raise DriveError(400, "invalid", f"Invalid uploadType {kind!r}.", "uploadType")
        return self._finish(existing, meta, content, mask, request[TOKEN],
                            request.query.get("addParents", ""), request.query.get("removeParents", ""))

    def _finish(self, existing, meta, content, mask, token, add="", remove=""):
        s = self.s
        if existing is None:
            f = s.create(dict(meta), bytes(content), token)
            return web.json_response(_file_json(s, f, mask), status=200)
        s.update_content(existing, bytes(content))
        if meta or add or remove:
            s.update_metadata(existing, meta, add, remove, token)
        else:
            s.record_change(existing["id"])
        return web.json_response(_file_json(s, existing, mask), status=200)

    async def upload_chunk(self, request):
        """A resumable chunk or status query (``Content-Range``); 308, 200/201 or 404."""
        s = self.s
        upload_id = request.query.get("upload_id")
        session = s.sessions.get(upload_id or "")
        if session is None or session.get("lost"):
            await request.read()
            raise DriveError(404, "notFound", "Upload session not found.")
        header = request.headers.get("Content-Range", "")
        start, end, total = _content_range(header)
        received = session["received"]
        if session["done"] is not None:
            await request.read()
            return session["done"]()
        if start is None:  # status query: "bytes */TOTAL"
            await request.read()
            return _resume_incomplete(len(received))
        if start > len(received):
            await request.read()
            raise DriveError(400, "badRequest",
                             f"Invalid request: the chunk starts at {start}, the server has "
                             f"{len(received)} bytes.")
        length = end - start + 1
        final = total is not None and end + 1 == total
        if not final and length % CHUNK_UNIT:
            await request.read()
            raise DriveError(400, "badRequest",
                             "Invalid request. The chunk size must be a multiple of 256 KiB "
                             "except for the last chunk.")
        drop_at = s.faults.drop_at
        if request.get(DROP_MIDWAY) or (drop_at is not None and start <= drop_at <= end):
            if drop_at is not None and start <= drop_at <= end:
                s.faults.drop_at = None
                cut = drop_at - start
            else:
                cut = length // 2
            data = await request.content.readexactly(cut) if cut else b""
            s.upload_bytes += len(data)
            keep = (start + len(data)) // CHUNK_UNIT * CHUNK_UNIT
            if keep > len(received):
                received.extend(data[len(received) - start: keep - start])
            _drop(request)
        data = await request.read()
        s.upload_bytes += len(data)
        if len(data) != length:
            raise DriveError(400, "badRequest", "The Content-Range does not match the body length.")
        # Keep the new bytes (a re-sent overlap is ignored).
        fresh = data[len(received) - start:]
        if not final and s.partial_keep_rate and s.rng.random() < s.partial_keep_rate \
                and len(fresh) > CHUNK_UNIT:
            fresh = fresh[: len(fresh) - CHUNK_UNIT]  # the server kept less than it was sent
        received.extend(fresh)
        if final and len(received) == total:
            existing = s.files.get(session["file_id"]) if session["file_id"] else None
            if session["file_id"] and existing is None:
                raise DriveError(404, "notFound", f"File not found: {session['file_id']}.")
            response = self._finish(existing, session["meta"], bytes(received), session["mask"],
                                    session["token"], session["add"], session["remove"])
            status = 201 if existing is None else 200
            body = response.body
            session["done"] = lambda: web.Response(body=body, status=status,
                                                   content_type="application/json")
            session["received"] = bytearray()
            return session["done"]()
        return _resume_incomplete(len(received))

    async def cancel_upload(self, request):
        """Cancel a resumable session (Drive answers 499)."""
        s = self.s
        s.sessions.pop(request.query.get("upload_id", ""), None)
        return web.Response(status=499)

    # -- control (not Drive: for tests of a server run with `python -m`) -----------------------

    async def control_state(self, request):
        """Counters, injected faults, live files and duplicate names."""
        s = self.s
        return web.json_response({
            "stats": dict(s.stats), "upload_bytes": s.upload_bytes,
            "faults_injected": dict(s.faults.injected), "files": s.snapshot(),
            "duplicates": [list(d) for d in s.duplicates()],
            "quota": {"limit": s.quota_limit, "usage": s.bytes_used}})

    async def control_reset(self, request):
        """Zero the counters."""
        self.s.stats.clear()
        self.s.upload_bytes = 0
        return web.json_response({"ok": True})

    async def control_faults(self, request):
        """``{"rate", "kinds", "after_commit", "seed"}`` (random faults), ``{"push": {"kind",
        "operation", "count", "after"}}`` (scripted) or ``{"drop_upload_at": N}``."""
        body = _json_body(await request.read())
        faults = self.s.faults
        try:
            if "push" in body:
                faults.push(**body["push"])
            elif "drop_upload_at" in body:
                faults.drop_upload_at(int(body["drop_upload_at"]))
            else:
                faults.configure(**body)
        except (TypeError, ValueError) as exc:
            raise DriveError(400, "invalid", str(exc)) from None
        return web.json_response({"ok": True})

    async def control_token(self, request):
        """``{"scopes": [...]}`` -> a refresh token of the default client and an access token."""
        body = _json_body(await request.read())
        scopes = body.get("scopes") or [SCOPE_DRIVE]
        return web.json_response(self._issue(DEFAULT_CLIENT_ID, scopes, refresh=True))

    # -- OAuth ---------------------------------------------------------------------------------

    async def authorize(self, request):
        """OAuth authorization endpoint: consents at once and redirects with a code."""
        s = self.s
        q = request.query
        client = s.clients.get(q.get("client_id", ""))
        if client is None:
            return web.Response(status=401, text="Error 401: invalid_client")
        redirect = q.get("redirect_uri", "")
        parsed = urllib.parse.urlsplit(redirect)
        loopback = parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost", "::1")
        if not (loopback or redirect in client["redirect_uris"]):
            return web.Response(status=400, text="Error 400: redirect_uri_mismatch")
        if q.get("response_type") != "code":
            return web.Response(status=400, text="Error 400: unsupported_response_type")
        scope = q.get("scope", "")
        if not scope:
            return web.Response(status=400, text="Error 400: invalid_request (missing scope)")
        method = q.get("code_challenge_method", "plain" if q.get("code_challenge") else None)
        if method not in (None, "plain", "S256"):
            return web.Response(status=400, text="Error 400: invalid_request (code_challenge_method)")
        params = {}
        if s.consent != "allow":
            params["error"] = "access_denied"
        else:
            code = "4/emu-" + secrets.token_urlsafe(24)
            s.codes[code] = {"client_id": q["client_id"], "redirect_uri": redirect,
                             "scopes": scope.split(), "challenge": q.get("code_challenge"),
                             "method": method, "expires": time.time() + 600}
            params["code"] = code
            params["scope"] = scope
        if "state" in q:
            params["state"] = q["state"]
        sep = "&" if parsed.query else "?"
        raise web.HTTPFound(redirect + sep + urllib.parse.urlencode(params))

    def _issue(self, client_id: str, scopes: list[str], refresh: bool) -> dict:
        s = self.s
        access = "ya29.emu-" + secrets.token_urlsafe(24)
        s.access_tokens[access] = {"scopes": scopes, "expires": time.time() + s.token_lifetime,
                                   "client_id": client_id}
        body = {"access_token": access, "expires_in": int(s.token_lifetime),
                "token_type": "Bearer", "scope": " ".join(scopes)}
        if refresh:
            rt = "1//emu-" + secrets.token_urlsafe(24)
            s.refresh_tokens[rt] = {"client_id": client_id, "scopes": scopes}
            body["refresh_token"] = rt
        return body

    async def token(self, request):
        """OAuth token endpoint: authorization code (PKCE), refresh token, JWT bearer."""
        s = self.s
        form = await request.post()

        def fail(status, error, description):
            return web.json_response({"error": error, "error_description": description},
                                     status=status)

        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_bearer(form.get("assertion", ""), fail)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if client_id is None and request.headers.get("Authorization", "").startswith("Basic "):
            raw = base64.b64decode(request.headers["Authorization"][6:]).decode()
            client_id, _, secret = raw.partition(":")
        client = s.clients.get(client_id or "")
        if client is None or (client["secret"] and client["secret"] != secret):
            return fail(401, "invalid_client", "The OAuth client was not found.")
        if grant == "authorization_code":
            code = s.codes.pop(form.get("code", ""), None)
            if code is None or code["expires"] < time.time() or code["client_id"] != client_id:
                return fail(400, "invalid_grant", "Malformed auth code.")
            if form.get("redirect_uri") != code["redirect_uri"]:
                return fail(400, "redirect_uri_mismatch", "Bad Request")
            if code["challenge"] is not None:
                verifier = form.get("code_verifier", "")
                if code["method"] == "S256":
                    digest = hashlib.sha256(verifier.encode()).digest()
                    expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
                else:
                    expected = verifier
                if not verifier or expected != code["challenge"]:
                    return fail(400, "invalid_grant", "Invalid code verifier.")
            return web.json_response(self._issue(client_id, code["scopes"], refresh=True))
        if grant == "refresh_token":
            record = s.refresh_tokens.get(form.get("refresh_token", ""))
            if record is None or record["client_id"] != client_id:
                return fail(400, "invalid_grant", "Token has been expired or revoked.")
            return web.json_response(self._issue(client_id, record["scopes"], refresh=False))
        return fail(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")

    def _jwt_bearer(self, assertion: str, fail):
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            claims = json.loads(_b64url(claims_b64))
            signature = _b64url(sig_b64)
        except ValueError:
            return fail(400, "invalid_grant", "Invalid JWT.")
        key = self.s.service_accounts.get(claims.get("iss", ""))
        if key is None:
            return fail(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            key.verify(signature, f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature:
            return fail(400, "invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        if claims.get("exp", 0) < now or claims.get("iat", now + 1000) > now + 300:
            return fail(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token.")
        # google-auth always signs for Google's token endpoint, whatever token_uri says
        if claims.get("aud") not in (f"{self.s.base_url}/token",
                                     "https://oauth2.googleapis.com/token"):
            return fail(400, "invalid_grant", "Invalid JWT: audience.")
        scopes = (claims.get("scope") or "").split()
        return web.json_response(self._issue(claims["iss"], scopes, refresh=False))

    async def revoke(self, request):
        """OAuth revocation endpoint."""
        form = await request.post()
        token = form.get("token") or request.query.get("token", "")
        found = self.s.access_tokens.pop(token, None) or self.s.refresh_tokens.pop(token, None)
        if found is None:
            return web.json_response({"error": "invalid_token"}, status=400)
        return web.Response(status=200)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _boundary(ctype: str) -> bytes:
    for part in ctype.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"').encode()
    raise DriveError(400, "badContent", "Missing multipart boundary.")


def _content_range(header: str) -> tuple[int | None, int | None, int | None]:
    """``bytes S-E/T``, ``bytes S-E/*``, ``bytes */T`` -> (S, E, T) with None for ``*``."""
    if not header.startswith("bytes "):
        raise DriveError(400, "badRequest", "Missing or invalid Content-Range.")
    spec, _, total = header[6:].partition("/")
    try:
        total_value = None if total == "*" else int(total)
        if spec == "*":
            return None, None, total_value
        a, _, b = spec.partition("-")
        start, end = int(a), int(b)
    except ValueError:
        raise DriveError(400, "badRequest", "Invalid Content-Range.") from None
    if end < start or (total_value is not None and end >= total_value):
        raise DriveError(400, "badRequest", "Invalid Content-Range.")
    return start, end, total_value


def _resume_incomplete(received: int) -> web.Response:
    headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
    return web.Response(status=308, headers=headers)


def _ranged(request: web.Request, content: bytes) -> web.Response:
    """Serve ``content`` honouring a ``Range`` header (206, or 416 past the end)."""
    header = request.headers.get("Range")
    size = len(content)
    if not header or not header.startswith("bytes="):
        return web.Response(body=content, content_type="application/octet-stream")
    spec = header[6:].split(",")[0].strip()
    a, _, b = spec.partition("-")
    try:
        if a == "":
            n = int(b)
            start, end = max(size - n, 0), size - 1
        else:
            start = int(a)
            end = int(b) if b else size - 1
    except ValueError:
        return web.Response(body=content, content_type="application/octet-stream")
    end = min(end, size - 1)
    if start >= size or start > end:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    return web.Response(status=206, body=content[start:end + 1],
                        content_type="application/octet-stream",
                        headers={"Content-Range": f"bytes {start}-{end}/{size}"})


def _order_key(order_by: str | None):
    if not order_by:
        return lambda f: (f["createdTime"], f["id"])
    keys = []
    for item in order_by.split(","):
        words = item.strip().split()
        if not words:
            continue
        name, desc = words[0], len(words) > 1 and words[1] == "desc"
        if name not in ("name", "name_natural", "createdTime", "modifiedTime", "folder"):
            raise DriveError(400, "invalid", f"Invalid orderBy {name!r}.", "orderBy")
        keys.append((name, desc))

    def key(f):
        out = []
        for name, desc in keys:
            if name == "folder":
                v = 0 if f["mimeType"] == FOLDER else 1
            elif name.startswith("name"):
                v = f["name"].casefold()
            else:
                v = f[name]
            out.append(_Reverse(v) if desc else v)
        return (*out, f["id"])

    return key


class _Reverse:
    def __init__(self, v):
        self.v = v

    def __lt__(self, other):
        return other.v < self.v

    def __eq__(self, other):
        return self.v == other.v
