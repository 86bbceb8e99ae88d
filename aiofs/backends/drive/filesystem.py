"""``DriveBackend``: Google Drive (REST v3) as an ``fsspec`` ``AsyncFileSystem`` on aiohttp.

Contract:

* Paths are relative to a dedicated root folder (``root_folder="AIO"`` under My Drive,
  created when missing, or ``root_folder_id``); names come back as ``"/a/b"`` like
  ``LocalBackend``'s, and are validated the same way. ``.aiofs/`` is hidden and
  write-protected as everywhere.
* Paths map to ids through a cache: exact folder listings (one ``files.list`` per folder
  page) and single-name lookups (``name =`` queries, whose case-insensitive matches are
  re-checked exactly). It is updated by our own writes and invalidated from ``changes.list``
  (at most every ``changes_interval`` seconds). Several live files with one name (Drive
  allows it) resolve to the oldest (``createdTime``, then id), with a ``DuplicateNameWarning``;
  :meth:`DriveBackend.duplicate_names` lists them and :meth:`~DriveBackend.merge_duplicate_names`
  merges them.
* Writes are whole-file and atomic: ``pipe_file``/``open('wb')`` upload when complete
  (multipart up to ``simple_upload_max``, resumable above in ``chunk_size`` chunks, a
  multiple of 256 KiB, resumed from the server's ``Range`` after a failure, restarted on
  404). Writing an existing name updates that file (a new revision), never a second file.
  Creates carry ids from ``files.generateIds``, so a retried create can never duplicate.
* ``rm`` deletes for good unless ``trash=True``; ``mv`` is one ``files.update`` (rename,
  ``addParents``/``removeParents``); ``cp_file`` is ``files.copy``; ``checksum``/``ukey``
  come from ``md5Checksum``.
* Google Docs, Sheets, Slides and Drawings appear read-only, named with their export
  extension (``Report.docx``), with the size of the export (fetched once per version).
* Capabilities: empty directories, server-side copy, native versions
  (:meth:`~DriveBackend.revisions`, :meth:`~DriveBackend.read_revision`,
  :meth:`~DriveBackend.keep_revision`), duplicate names, atomic writes, range reads.
* :meth:`~DriveBackend.storage_quota` is ``about.get``'s ``storageQuota`` for the overview.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import os
import posixpath
import secrets
import time
import warnings
import weakref
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync, sync_wrapper

from aiofs.backends.drive.auth import build_credentials
from aiofs.backends.drive.client import DriveClient, drive_error
from aiofs.backends.local import validate_relative_path
from aiofs.errors import (
    AlreadyExists, DirectoryNotEmpty, InvalidArgument, InvalidPath, IsADirectory, NotADirectory,
    NotFound, ReadOnly, VersionNotFound,
)
from aiofs.layer import (
    ATOMIC_WRITES, DUPLICATE_NAMES, EMPTY_DIRECTORIES, INTERNAL_DIR, NATIVE_VERSIONS,
    RANGE_READS, SERVER_SIDE_COPY, SafeTextWrites, has_glob, hide_internal_path,
    internals_visible, is_internal, refuse_internal_write,
)

log = logging.getLogger("aiofs.drive")

FOLDER = "application/vnd.google-apps.folder"
CHUNK_UNIT = 256 * 1024
FILE_FIELDS = ("id,name,mimeType,parents,size,md5Checksum,createdTime,modifiedTime,version,"
               "trashed,headRevisionId")
LIST_FIELDS = f"nextPageToken,files({FILE_FIELDS})"
# Google-native type -> (export MIME type, extension shown in listings)
DEFAULT_EXPORTS = {
    "application/vnd.google-apps.document": (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    "application/vnd.google-apps.spreadsheet": (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    "application/vnd.google-apps.presentation": (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation", "pptx"),
    "application/vnd.google-apps.drawing": ("application/pdf", "pdf"),
}


class DuplicateNameWarning(UserWarning):
    """Several live Drive files share one name in one folder; one was picked."""


def _quote(value: str) -> str:
    """A ``q`` string literal: escape ``\\`` first, then ``'``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class DriveBackend(SafeTextWrites, AsyncFileSystem):
    """Google Drive v3 under a dedicated folder.

    Options (plain data): ``root_folder`` (name under My Drive, default ``"AIO"``) or
    ``root_folder_id``; credentials (``refresh_token`` + ``client_id``/``client_secret``,
    ``token_file``, ``service_account_file``/``service_account_info``, or a bare ``token``;
    default: the token file of ``aiofs auth login``); ``scopes`` (``drive.file`` default);
    ``api_url``/``token_uri`` (Google's by default; tests point them at the emulator);
    ``trash`` (``rm`` moves to the trash); ``chunk_size`` (resumable chunk, a multiple of
    256 KiB, default 8 MiB); ``simple_upload_max`` (5 MB); ``retries`` (6);
    ``retry_backoff_base``/``retry_backoff_max`` (1 s / 32 s); ``max_concurrency`` (bulk
    ``pipe``/``cat``/``put``, 32); ``changes_interval`` (seconds between ``changes.list``
    polls, 5); ``export_formats`` ({native MIME: [export MIME, extension]}).
    """

    protocol = "aiofs-drive"
    root_marker = "/"
    cachable = False  # holds a session, caches and locks: never share by accident
    capabilities = frozenset({EMPTY_DIRECTORIES, SERVER_SIDE_COPY, NATIVE_VERSIONS,
                              DUPLICATE_NAMES, ATOMIC_WRITES, RANGE_READS})
    _aiofs_describe = True

    def __init__(self, root_folder: str = "AIO", root_folder_id: str | None = None,
                 api_url: str = "https://www.googleapis.com", token_uri: str | None = None,
                 token: str | None = None, refresh_token: str | None = None,
                 client_id: str | None = None, client_secret: str | None = None,
                 token_file: str | None = None, service_account_file: str | None = None,
                 service_account_info: dict | None = None, scopes=None, trash: bool = False,
                 chunk_size: int = 8 * 1024 * 1024, simple_upload_max: int = 5 * 1024 * 1024,
                 retries: int = 6, retry_backoff_base: float = 1.0,
                 retry_backoff_max: float = 32.0, max_concurrency: int = 32,
                 changes_interval: float = 5.0, export_formats: dict | None = None,
                 timeout: float = 300.0, asynchronous: bool = False, loop=None, **kwargs):
        super().__init__(asynchronous=asynchronous, loop=loop, batch_size=max_concurrency,
                         **kwargs)
        chunk_size = int(chunk_size)
        if chunk_size <= 0 or chunk_size % CHUNK_UNIT:
            raise InvalidArgument(f"chunk_size must be a positive multiple of 256 KiB, not {chunk_size}")
        if root_folder_id is None and (not root_folder or "/" in root_folder):
            raise InvalidArgument(f"root_folder must be one folder name, not {root_folder!r}")
        self.root_folder = root_folder
        self.root_folder_id = root_folder_id
        self.api_url = api_url.rstrip("/")
        self.trash = bool(trash)
        self.chunk_size = chunk_size
        self.simple_upload_max = int(simple_upload_max)
        self.max_concurrency = int(max_concurrency)
        self.changes_interval = float(changes_interval)
        exports = export_formats if export_formats is not None else DEFAULT_EXPORTS
        self.export_formats = {k: tuple(v) for k, v in exports.items()}
        self.credentials = build_credentials(
            token=token, refresh_token=refresh_token, client_id=client_id,
            client_secret=client_secret, token_uri=token_uri, scopes=scopes,
            token_file=token_file, service_account_file=service_account_file,
            service_account_info=service_account_info)
        self.client = DriveClient(self.credentials, retries=retries,
                                  backoff_base=retry_backoff_base, backoff_max=retry_backoff_max,
                                  timeout=timeout)
        self._root: dict | None = None
        self._nodes: dict[str, dict] = {}          # rel path -> chosen Drive file
        self._children: dict[str, dict[str, dict]] = {}  # rel folder -> complete listing
        self._locks: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._id_pool: list[str] = []
        self._exports: dict[tuple[str, str], bytes] = {}
        self._changes_token: str | None = None
        self._changes_checked = 0.0
        self._warned: set[tuple[str, str]] = set()
        weakref.finalize(self, DriveBackend._close_session, self.loop, self.client)

    # -- plumbing ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Drive({self.root_folder_id or self.root_folder!r})"

    @property
    def fsid(self) -> str:
        """Identifies the store: API URL and root folder."""
        return f"drive:{self.api_url}:{self.root_folder_id or self.root_folder}"

    @staticmethod
    def _close_session(loop, client: DriveClient) -> None:
        session = client.session
        if session is None or session.closed:
            return
        if loop is not None and loop.is_running() and not loop.is_closed():
            try:
                sync(loop, session.close, timeout=1)
                return
            except Exception:  # the loop may be shutting down: close the sockets directly
                pass
        connector = getattr(session, "_connector", None)
        if connector is not None:
            connector._close()

    @property
    def _api(self) -> str:
        return f"{self.api_url}/drive/v3"

    @property
    def _upload_api(self) -> str:
        return f"{self.api_url}/upload/drive/v3"

    @classmethod
    def _relative(cls, path) -> str:
        path = fsspec.utils.stringify_path(path)
        if isinstance(path, bytes):
            path = validate_relative_path(path)
        if path.startswith("aiofs-drive://"):
            path = path[len("aiofs-drive://"):]
        return validate_relative_path(path)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        rel = cls._relative(path)
        return "/" + rel if rel else ""

    @staticmethod
    def _get_kwargs_from_urls(path):
        return {}

    def unstrip_protocol(self, name: str) -> str:
        """``aiofs-drive://a/b`` for the name ``/a/b``."""
        return f"aiofs-drive://{name.lstrip('/')}"

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def _new_id(self) -> str:
        """An id from ``files.generateIds`` (fetched 100 at a time)."""
        async with self._lock("generateIds"):
            if not self._id_pool:
                resp = await self.client.call("GET", f"{self._api}/files/generateIds",
                                              params={"count": "100", "space": "drive",
                                                      "fields": "ids"})
                self._id_pool = list(resp.json()["ids"])
            return self._id_pool.pop()

    # -- nodes and the path cache ----------------------------------------------------------------

    def _display(self, res: dict) -> str | None:
        """The name shown for a Drive file; ``None`` for types we do not show."""
        mime, name = res["mimeType"], res["name"]
        if "/" in name or name in ("", ".", "..") or "\x00" in name:
            # legal on Drive, but no path can name it: not shown (other apps may make them)
            log.info("drive: not showing %r (%s): no path can name it", name, res["id"])
            return None
        if mime.startswith("application/vnd.google-apps.") and mime != FOLDER:
            export = self.export_formats.get(mime)  # shortcuts, forms, sites: not shown
            return None if export is None else f"{name}.{export[1]}"
        return name

    def _node(self, res: dict) -> dict:
        node = dict(res)
        node["display"] = self._display(res)
        return node

    @staticmethod
    def _sort_key(node: dict):
        return (node.get("createdTime") or "", node["id"])

    def _choose(self, parent_rel: str, name: str, candidates: list[dict]) -> dict | None:
        if not candidates:
            return None
        candidates = sorted(candidates, key=self._sort_key)
        if len(candidates) > 1 and (parent_rel, name) not in self._warned:
            self._warned.add((parent_rel, name))
            message = (f"{len(candidates)} Drive files are named {name!r} in "
                       f"/{parent_rel}: using the oldest ({candidates[0]['id']}); "
                       f"`aiofs dedupe --merge` or DriveBackend.merge_duplicate_names() merges them")
            log.warning(message)
            warnings.warn(message, DuplicateNameWarning, stacklevel=2)
        return candidates[0]

    def _remember(self, rel: str, node: dict) -> None:
        self._nodes[rel] = node
        parent, name = posixpath.split(rel)
        listing = self._children.get(parent)
        if listing is not None:
            listing[name] = node

    def _forget(self, rel: str) -> None:
        """Drop ``rel`` and everything below it from the cache."""
        prefix = rel + "/"
        for key in [k for k in self._nodes if k == rel or k.startswith(prefix)]:
            del self._nodes[key]
        for key in [k for k in self._children if k == rel or k.startswith(prefix)]:
            del self._children[key]
        parent, name = posixpath.split(rel)
        listing = self._children.get(parent)
        if listing is not None:
            listing.pop(name, None)

    def invalidate_cache(self, path=None):
        """Forget cached paths (all, or ``path`` and below); the root folder id stays."""
        if path is None:
            self._nodes.clear()
            self._children.clear()
        else:
            self._forget(self._relative(path))
        self._exports.clear()

    async def _root_node(self) -> dict:
        if self._root is not None:
            return self._root
        async with self._lock("root"):
            if self._root is not None:
                return self._root
            if self._changes_token is None:
                # Before anything is cached, so no change after this point is missed.
                resp = await self.client.call("GET", f"{self._api}/changes/startPageToken")
                self._changes_token = resp.json()["startPageToken"]
                self._changes_checked = time.monotonic()
            if self.root_folder_id is not None:
                resp = await self.client.call("GET", f"{self._api}/files/{self.root_folder_id}",
                                              params={"fields": FILE_FIELDS},
                                              path=self.root_folder_id)
                node = self._node(resp.json())
                if node["mimeType"] != FOLDER:
                    raise NotADirectory(f"Drive root {self.root_folder_id} is not a folder")
            else:
                q = (f"'root' in parents and name = {_quote(self.root_folder)} and "
                     f"mimeType = '{FOLDER}' and trashed = false")
                found = [r for r in await self._query(q) if r["name"] == self.root_folder]
                node = self._choose("<My Drive>", self.root_folder, found)
                if node is None:
                    node = await self._create_folder("root", self.root_folder)
                    self._children[""] = {}
            self._root = node
            return node

    async def _query(self, q: str, page_size: int = 1000) -> list[dict]:
        """Every file matching ``q`` (following page tokens; pages may be short)."""
        out: list[dict] = []
        token = None
        while True:
            params = {"q": q, "pageSize": str(page_size), "fields": LIST_FIELDS,
                      "spaces": "drive"}
            if token:
                params["pageToken"] = token
            resp = await self.client.call("GET", f"{self._api}/files", params=params)
            body = resp.json()
            out.extend(self._node(r) for r in body.get("files", []))
            token = body.get("nextPageToken")
            if not token:
                return out

    async def _poll_changes(self) -> None:
        """Invalidate cached paths that ``changes.list`` reports changed (rate-limited)."""
        if self._changes_token is None or \
                time.monotonic() - self._changes_checked < self.changes_interval:
            return
        async with self._lock("changes"):
            if time.monotonic() - self._changes_checked < self.changes_interval:
                return
            token = self._changes_token
            changed: list[dict] = []
            while True:
                resp = await self.client.call(
                    "GET", f"{self._api}/changes",
                    params={"pageToken": token, "pageSize": "1000", "spaces": "drive",
                            "fields": "nextPageToken,newStartPageToken,changes(fileId,removed,"
                                      "file(id,parents,trashed))"})
                body = resp.json()
                changed.extend(body.get("changes", []))
                if body.get("nextPageToken"):
                    token = body["nextPageToken"]
                    continue
                self._changes_token = body.get("newStartPageToken", token)
                break
            self._changes_checked = time.monotonic()
            if changed:
                self._apply_changes(changed)

    def _apply_changes(self, changes: list[dict]) -> None:
        ids = {c["fileId"] for c in changes}
        if self._root is not None and self._root["id"] in ids:
            gone = any(c["fileId"] == self._root["id"] and
                       (c.get("removed") or (c.get("file") or {}).get("trashed")) for c in changes)
            if gone and self.root_folder_id is None:
                # the root folder was deleted or trashed elsewhere: find (or make) it again
                self._root = None
                self._nodes.clear()
                self._children.clear()
                return
        parents = {p for c in changes for p in (c.get("file") or {}).get("parents", [])}
        for rel, node in list(self._nodes.items()):
            if rel in self._nodes and node["id"] in ids:
                self._forget(rel)
        for rel, node in list(self._nodes.items()):
            if node["id"] in parents:
                self._children.pop(rel, None)
        if self._root is not None and self._root["id"] in parents:
            self._children.pop("", None)
        for key in [k for k in self._exports if k[0] in ids]:
            del self._exports[key]

    async def _list_children(self, rel: str, node: dict) -> dict[str, dict]:
        """The complete listing of folder ``rel`` (cached): display name -> chosen file."""
        listing = self._children.get(rel)
        if listing is not None:
            return listing
        found = await self._query(f"{_quote(node['id'])} in parents and trashed = false")
        groups: dict[str, list[dict]] = {}
        for child in found:
            if child["display"] is not None:
                groups.setdefault(child["display"], []).append(child)
        listing = {name: self._choose(rel, name, group) for name, group in groups.items()}
        self._children[rel] = listing
        for name, child in listing.items():
            self._nodes[posixpath.join(rel, name) if rel else name] = child
        return listing

    async def _lookup(self, rel: str) -> dict | None:
        """The Drive file at ``rel``, or ``None``."""
        if rel == "":
            return await self._root_node()
        node = self._nodes.get(rel)
        if node is not None:
            return node
        parent_rel, name = posixpath.split(rel)
        listing = self._children.get(parent_rel)
        if listing is not None:
            return listing.get(name)
        parent = await self._lookup(parent_rel)
        if parent is None or parent["mimeType"] != FOLDER:
            return None
        listing = self._children.get(parent_rel)  # filled meanwhile?
        if listing is not None:
            return listing.get(name)
        names = [name]
        for native, (_, ext) in self.export_formats.items():
            if name.endswith("." + ext) and len(name) > len(ext) + 1:
                names.append(name[: -len(ext) - 1])
        clause = " or ".join(f"name = {_quote(n)}" for n in dict.fromkeys(names))
        found = await self._query(f"{_quote(parent['id'])} in parents and ({clause}) "
                                  f"and trashed = false")
        # Drive's name match ignores case: keep exact matches of the shown name only.
        exact = [f for f in found if f["display"] == name]
        node = self._choose(parent_rel, name, exact)
        if node is not None:
            self._nodes[rel] = node
        return node

    # -- entries -----------------------------------------------------------------------------------

    def _is_native(self, node: dict) -> bool:
        return node["mimeType"] in self.export_formats

    async def _export(self, node: dict) -> bytes:
        key = (node["id"], str(node.get("version")))
        data = self._exports.get(key)
        if data is None:
            mime = self.export_formats[node["mimeType"]][0]
            resp = await self.client.call("GET", f"{self._api}/files/{node['id']}/export",
                                          params={"mimeType": mime}, path=node["display"])
            data = resp.body
            if len(self._exports) > 64:
                self._exports.clear()
            self._exports[key] = data
        return data

    async def _entry(self, rel: str, node: dict) -> dict:
        is_dir = node["mimeType"] == FOLDER
        native = self._is_native(node)
        if is_dir:
            size = 0
        elif native:
            size = len(await self._export(node))  # the real size, not Drive's 0 bytes
        else:
            size = int(node.get("size") or 0)
        entry = {
            "name": "/" + rel if rel else "/",
            "size": size,
            "type": "directory" if is_dir else "file",
            "id": node["id"],
            "mimeType": node["mimeType"],
            "created": _timestamp(node.get("createdTime")),
            "mtime": _timestamp(node.get("modifiedTime")),
            "generation": int(node.get("version") or 0),
        }
        if node.get("md5Checksum"):
            entry["md5Checksum"] = node["md5Checksum"]
        if native:
            entry["readonly"] = True
            entry["export_mime_type"] = self.export_formats[node["mimeType"]][0]
        return entry

    # -- listing -----------------------------------------------------------------------------------

    async def _info(self, path, **kwargs):
        rel = self._relative(path)
        hide_internal_path(rel)
        await self._poll_changes()
        node = await self._lookup(rel)
        if node is None:
            raise NotFound(f"no such file or directory: {rel!r}", rel)
        return await self._entry(rel, node)

    async def _ls(self, path, detail=True, **kwargs):
        rel = self._relative(path)
        hide_internal_path(rel)
        await self._poll_changes()
        node = await self._lookup(rel)
        if node is None:
            raise NotFound(f"no such file or directory: {rel!r}", rel)
        if node["mimeType"] != FOLDER:
            entry = await self._entry(rel, node)
            return [entry] if detail else [entry["name"]]
        listing = await self._list_children(rel, node)
        show_internal = internals_visible()
        names = sorted(n for n in listing if show_internal or n != INTERNAL_DIR)
        children = [(posixpath.join(rel, n) if rel else n, listing[n]) for n in names]
        if not detail:
            return ["/" + child for child, _ in children]
        return list(await asyncio.gather(*(self._entry(child, n) for child, n in children)))

    async def _created(self, path):
        info = await self._info(path)
        return datetime.datetime.fromtimestamp(info["created"], tz=datetime.timezone.utc)

    async def _modified(self, path):
        info = await self._info(path)
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.timezone.utc)

    created = sync_wrapper(_created)
    modified = sync_wrapper(_modified)

    def ukey(self, path):
        """``md5Checksum`` (``id:version`` for folders and Google-native files)."""
        info = self.info(path)
        return info.get("md5Checksum") or f"{info['id']}:{info['generation']}"

    def checksum(self, path):
        """The MD5 of the content as an int (Drive computes it; no download)."""
        info = self.info(path)
        if info.get("md5Checksum"):
            return int(info["md5Checksum"], 16)
        return int(__import__("hashlib").md5(self.cat_file(path)).hexdigest(), 16)

    # -- reading -------------------------------------------------------------------------------------

    async def _file_node(self, rel: str) -> dict:
        node = await self._lookup(rel)
        if node is None:
            raise NotFound(f"no such file: {rel!r}", rel)
        if node["mimeType"] == FOLDER:
            raise IsADirectory(f"is a directory: {rel!r}", rel)
        return node

    async def _cat_file(self, path, start=None, end=None, **kwargs):
        rel = self._relative(path)
        hide_internal_path(rel)
        await self._poll_changes()
        node = await self._file_node(rel)
        if self._is_native(node):
            return (await self._export(node))[start:end]
        if start is None and end is None:
            return await self._download(rel, node, None)
        size = int(node.get("size") or 0)
        if start is not None and start < 0 and end is None:
            return await self._download(rel, node, f"bytes=-{-start}") if size else b""
        start = 0 if start is None else (max(size + start, 0) if start < 0 else start)
        end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        if end <= start:
            return b""
        return await self._download(rel, node, f"bytes={start}-{end - 1}")

    async def _download(self, rel: str, node: dict, byte_range: str | None) -> bytes:
        headers = {"Range": byte_range} if byte_range else None
        try:
            resp = await self.client.call("GET", f"{self._api}/files/{node['id']}",
                                          params={"alt": "media"}, headers=headers,
                                          ok=(416,), path=rel)
        except NotFound:
            self._forget(rel)  # deleted by someone else: the cache was stale
            raise NotFound(f"no such file: {rel!r}", rel) from None
        if resp.status == 416:
            return b""
        if byte_range and resp.status == 200 and byte_range.startswith("bytes="):
            a, _, b = byte_range[6:].partition("-")  # the server ignored the range
            if a == "":
                return resp.body[-int(b):]
            return resp.body[int(a): int(b) + 1 if b else None]
        return resp.body

    async def _get_file(self, rpath, lpath, callback=fsspec.callbacks.DEFAULT_CALLBACK,
                        outfile=None, **kwargs):
        rel = self._relative(rpath)
        hide_internal_path(rel)
        node = await self._lookup(rel)
        if node is None:
            raise NotFound(f"no such file: {rel!r}", rel)
        if node["mimeType"] == FOLDER:
            os.makedirs(lpath, exist_ok=True)
            return
        if self._is_native(node):
            blocks = [await self._export(node)]
        else:
            size = int(node.get("size") or 0)
            step = 4 * self.chunk_size
            blocks = None
            callback.set_size(size)
        parent = os.path.dirname(os.fspath(lpath)) if outfile is None else None
        if parent:
            os.makedirs(parent, exist_ok=True)
        f = outfile if outfile is not None else open(lpath, "wb")
        try:
            if blocks is not None:
                for block in blocks:
                    f.write(block)
            else:
                for offset in range(0, size, step):
                    block = await self._download(rel, node, f"bytes={offset}-{min(offset + step, size) - 1}")
                    f.write(block)
                    callback.relative_update(len(block))
        finally:
            if outfile is None:
                f.close()

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        from aiofs.backends.drive.files import DriveReadFile, DriveWriteFile

        rel = self._relative(path)
        if "r" in mode:
            hide_internal_path(rel)
            return DriveReadFile(self, "/" + rel, mode=mode, block_size=block_size or 4 * 2 ** 20,
                                 cache_options=cache_options)
        refuse_internal_write(rel)
        node = sync(self.loop, self._check_writable, rel, "x" in mode)
        initial = None
        if "a" in mode and node is not None:
            initial = self.cat_file("/" + rel)
        return DriveWriteFile(self, rel, mode, initial=initial)

    async def _check_writable(self, rel: str, exclusive: bool) -> dict | None:
        """The existing file a write to ``rel`` would update (``None``: a new file)."""
        if not rel:
            raise IsADirectory("cannot write over the storage root", rel)
        await self._poll_changes()
        node = await self._lookup(rel)
        if node is None:
            parent = posixpath.dirname(rel)
            await self._check_parents(parent, rel)
            return None
        if node["mimeType"] == FOLDER:
            raise IsADirectory(f"cannot write over a directory: {rel!r}", rel)
        if self._is_native(node):
            raise ReadOnly(f"Google Docs editors files are read-only here: {rel!r}", rel)
        if exclusive:
            raise AlreadyExists(f"file exists: {rel!r}", rel)
        return node

    async def _check_parents(self, parent: str, rel: str) -> None:
        """Raise ``NOT_A_DIRECTORY`` when a file sits where a parent folder of ``rel`` goes."""
        while parent:
            node = await self._lookup(parent)
            if node is not None:
                if node["mimeType"] != FOLDER:
                    raise NotADirectory(f"a parent of {rel!r} is a file", rel)
                return
            parent = posixpath.dirname(parent)

    # -- writing -------------------------------------------------------------------------------------

    async def _ensure_folder(self, rel: str) -> dict:
        """The folder at ``rel``, created (with its parents) when missing."""
        if rel == "":
            return await self._root_node()
        node = await self._lookup(rel)
        if node is None:
            async with self._lock("dir:" + rel):  # concurrent writers: one folder, not two
                node = await self._lookup(rel)
                if node is None:
                    parent = await self._ensure_folder(posixpath.dirname(rel))
                    node = await self._create_folder(parent["id"], posixpath.basename(rel))
                    self._remember(rel, node)
                    self._children[rel] = {}
        if node["mimeType"] != FOLDER:
            raise NotADirectory(f"not a directory: {rel!r}", rel)
        return node

    async def _create_folder(self, parent_id: str, name: str) -> dict:
        file_id = await self._new_id()
        resp = await self.client.call(
            "POST", f"{self._api}/files", params={"fields": FILE_FIELDS},
            json_body={"id": file_id, "name": name, "mimeType": FOLDER, "parents": [parent_id]},
            retried_ok=(409,), path=name)
        return await self._created_node(resp, file_id)

    async def _created_node(self, resp, file_id: str) -> dict:
        """The new file from a create response; after a 409 (our earlier attempt made it)
        fetch it by its id."""
        if resp.status == 409:
            resp = await self.client.call("GET", f"{self._api}/files/{file_id}",
                                          params={"fields": FILE_FIELDS}, path=file_id)
        return self._node(resp.json())

    async def _pipe_file(self, path, value, mode="overwrite", **kwargs):
        rel = self._relative(path)
        refuse_internal_write(rel)
        data = bytes(value)
        await self._write(rel, io.BytesIO(data), len(data), exclusive=mode == "create")

    async def _write(self, rel: str, source, size: int, exclusive: bool = False) -> dict:
        """Store ``size`` bytes from the seekable ``source`` at ``rel`` (create or update)."""
        async with self._lock("file:" + rel):
            existing = await self._check_writable(rel, exclusive)
            if existing is None:
                parent = await self._ensure_folder(posixpath.dirname(rel))
                file_id = await self._new_id()
                meta = {"id": file_id, "name": posixpath.basename(rel), "parents": [parent["id"]]}
            else:
                file_id, meta = existing["id"], {}
            if size <= self.simple_upload_max:
                result = await self._simple_upload(rel, source, meta, file_id, existing is not None)
            else:
                result = await self._resumable_upload(rel, source, size, meta, file_id,
                                                      existing is not None)
            node = self._node(result)
            self._remember(rel, node)
            return node

    async def _simple_upload(self, rel, source, meta, file_id, update: bool) -> dict:
        source.seek(0)
        data = source.read()
        if update:  # a new revision of the same file
            resp = await self.client.call(
                "PATCH", f"{self._upload_api}/files/{file_id}",
                params={"uploadType": "media", "fields": FILE_FIELDS}, data=data,
                headers={"Content-Type": "application/octet-stream"}, path=rel)
            return resp.json()
        boundary = "aiofs-" + secrets.token_hex(16)
        body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{json.dumps(meta)}\r\n--{boundary}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + \
            f"\r\n--{boundary}--\r\n".encode()
        resp = await self.client.call(
            "POST", f"{self._upload_api}/files",
            params={"uploadType": "multipart", "fields": FILE_FIELDS}, data=body,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
            retried_ok=(409,), path=rel)
        return (await self._created_node(resp, file_id)) if resp.status == 409 else resp.json()

    async def _resumable_upload(self, rel, source, size: int, meta, file_id, update: bool) -> dict:
        """A resumable upload: chunks of ``chunk_size``; after a failure ask the server how
        much it kept (``Range``) and go on from there; a lost session (404) starts over."""
        from aiofs.backends.drive.client import TRANSIENT_EXCEPTIONS, parse_error, retryable

        client = self.client
        restarts = 0
        while True:
            url = f"{self._upload_api}/files" + (f"/{file_id}" if update else "")
            resp = await client.call("PATCH" if update else "POST", url,
                                     params={"uploadType": "resumable", "fields": FILE_FIELDS},
                                     json_body=meta, path=rel,
                                     headers={"X-Upload-Content-Length": str(size),
                                              "X-Upload-Content-Type": "application/octet-stream"},
                                     retried_ok=(409,))
            if resp.status == 409:  # an earlier attempt of a create completed the upload
                return (await self._created_node(resp, file_id)).copy()
            session = resp.headers["Location"]
            offset, failures = 0, 0
            while True:
                if failures:
                    status = await self._session_status(session, size, rel)
                    if status is None:
                        break  # the session is gone: start over
                    if isinstance(status, dict):
                        return status
                    offset = status
                end = min(offset + self.chunk_size, size)
                source.seek(offset)
                data = source.read(end - offset)
                try:
                    r = await client.send("PUT", session, data=data, headers={
                        "Content-Range": f"bytes {offset}-{end - 1}/{size}",
                        "Content-Type": "application/octet-stream"})
                except TRANSIENT_EXCEPTIONS:
                    failures += 1
                    if failures > client.max_retries:
                        raise
                    await client.backoff(failures - 1)
                    continue
                if r.status in (200, 201):
                    return r.json()
                if r.status == 308:
                    offset = _range_end(r.headers.get("Range"))
                    failures = 0
                    continue
                reason, message = parse_error(r.body)
                if r.status in (404, 410):
                    break
                if retryable(r.status, reason) and failures < client.max_retries:
                    failures += 1
                    await client.backoff(failures - 1)
                    continue
                raise drive_error(r.status, reason, message, rel)
            restarts += 1
            if restarts > client.max_retries:
                raise drive_error(404, "notFound", "the upload session kept disappearing", rel)
            log.info("drive upload of %s: session lost, starting over", rel)

    async def _session_status(self, session: str, size: int, rel: str):
        """Ask a resumable session where it is: bytes kept (int), the file (done), or
        ``None`` (gone)."""
        resp = await self.client.call("PUT", session, data=b"",
                                      headers={"Content-Range": f"bytes */{size}"},
                                      ok=(404, 410), path=rel)
        if resp.status in (200, 201):
            return resp.json()
        if resp.status in (404, 410):
            return None
        return _range_end(resp.headers.get("Range"))

    async def _pipe(self, path, value=None, batch_size=None, **kwargs):
        """Bulk write, ``max_concurrency`` uploads at a time (parents created first, once)."""
        if isinstance(path, str):
            path = {path: value}
        items = {self._relative(k): v for k, v in path.items()}
        for rel in items:
            refuse_internal_write(rel)
        await self._poll_changes()
        per_parent: dict[str, int] = {}
        for rel in items:
            parent = posixpath.dirname(rel)
            per_parent[parent] = per_parent.get(parent, 0) + 1
        for parent, count in sorted(per_parent.items()):
            try:
                folder = await self._ensure_folder(parent)
            except NotADirectory:
                continue  # the per-file write reports it
            if count >= 4:  # one listing instead of a name lookup per file
                await self._list_children(parent, folder)
        coros = [self._pipe_file(rel, data, **kwargs) for rel, data in items.items()]
        await _bounded(coros, batch_size or self.max_concurrency)

    async def _put_file(self, lpath, rpath, callback=fsspec.callbacks.DEFAULT_CALLBACK,
                        mode="overwrite", **kwargs):
        rel = self._relative(rpath)
        refuse_internal_write(rel)
        if os.path.isdir(lpath):
            await self._makedirs("/" + rel, exist_ok=True)
            return
        with open(lpath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            callback.set_size(size)
            await self._write(rel, f, size, exclusive=mode == "create")
            callback.relative_update(size)

    async def _put(self, lpath, rpath, recursive=False, callback=fsspec.callbacks.DEFAULT_CALLBACK,
                   batch_size=None, maxdepth=None, **kwargs):
        return await super()._put(lpath, rpath, recursive=recursive, callback=callback,
                                  batch_size=batch_size or self.max_concurrency,
                                  maxdepth=maxdepth, **kwargs)

    async def _cp_file(self, path1, path2, **kwargs):
        rel1, rel2 = self._relative(path1), self._relative(path2)
        hide_internal_path(rel1)
        refuse_internal_write(rel2)
        src = await self._lookup(rel1)
        if src is None:
            raise NotFound(f"no such file or directory: {rel1!r}", rel1)
        if src["mimeType"] == FOLDER:
            await self._makedirs("/" + rel2, exist_ok=True)
            return
        if self._is_native(src):  # a copy of the exported file, as a plain file
            data = await self._export(src)
            await self._write(rel2, io.BytesIO(data), len(data))
            return
        async with self._lock("file:" + rel2):
            existing = await self._check_writable(rel2, False)
            if existing is not None:
                await self._delete(rel2, existing)
            parent = await self._ensure_folder(posixpath.dirname(rel2))
            file_id = await self._new_id()
            resp = await self.client.call(
                "POST", f"{self._api}/files/{src['id']}/copy", params={"fields": FILE_FIELDS},
                json_body={"id": file_id, "name": posixpath.basename(rel2),
                           "parents": [parent["id"]]}, retried_ok=(409,), path=rel2)
            self._remember(rel2, await self._created_node(resp, file_id))

    # -- moving --------------------------------------------------------------------------------------

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        """Rename/move with one ``files.update`` (lists and globs: one per source)."""
        if isinstance(path1, list) or (isinstance(path1, str) and has_glob(path1)):
            return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        return sync(self.loop, self._mv, path1, path2)

    async def _mv(self, path1, path2, **kwargs):
        rel1, rel2 = self._relative(path1), self._relative(path2)
        refuse_internal_write(rel1)
        refuse_internal_write(rel2)
        if not rel1 or not rel2:
            raise InvalidPath("cannot move the storage root")
        if rel2 == rel1 or rel2.startswith(rel1 + "/"):
            raise InvalidPath(f"cannot move {rel1!r} into itself")
        await self._poll_changes()
        src = await self._lookup(rel1)
        if src is None:
            raise NotFound(f"no such file or directory: {rel1!r}", rel1)
        dest = await self._lookup(rel2)
        if dest is not None and dest["mimeType"] == FOLDER and src["mimeType"] != FOLDER:
            rel2 = f"{rel2}/{posixpath.basename(rel1)}"  # into the directory, like mv(1)
            dest = await self._lookup(rel2)
        if dest is not None:
            if dest["id"] == src["id"]:
                return
            if dest["mimeType"] == FOLDER and src["mimeType"] != FOLDER:
                raise IsADirectory(f"cannot move a file over a directory: {rel2!r}", rel2)
            if src["mimeType"] == FOLDER and dest["mimeType"] != FOLDER:
                raise NotADirectory(f"cannot move a directory over a file: {rel2!r}", rel2)
            if dest["mimeType"] == FOLDER:
                if await self._list_children(rel2, dest):
                    raise DirectoryNotEmpty(f"destination directory not empty: {rel2!r}", rel2)
            if self._is_native(dest):
                raise ReadOnly(f"Google Docs editors files are read-only here: {rel2!r}", rel2)
            # The replaced file goes first: never two live files with one name.
            await self._delete(rel2, dest)
        old_parent = await self._lookup(posixpath.dirname(rel1))
        new_parent = await self._ensure_folder(posixpath.dirname(rel2))
        name = posixpath.basename(rel2)
        if self._is_native(src):
            ext = "." + self.export_formats[src["mimeType"]][1]
            name = name[: -len(ext)] if name.endswith(ext) and len(name) > len(ext) else name
        params = {"fields": FILE_FIELDS}
        if old_parent["id"] != new_parent["id"]:
            params.update(addParents=new_parent["id"], removeParents=old_parent["id"])
        resp = await self.client.call("PATCH", f"{self._api}/files/{src['id']}", params=params,
                                      json_body={"name": name}, path=rel1)
        self._forget(rel1)
        self._forget(rel2)
        node = self._node(resp.json())
        if node["display"] is not None:
            self._remember(posixpath.join(posixpath.dirname(rel2), node["display"]), node)

    # -- directories and deletion --------------------------------------------------------------------

    async def _mkdir(self, path, create_parents=True, **kwargs):
        rel = self._relative(path)
        refuse_internal_write(rel)
        node = await self._lookup(rel)
        if node is not None:
            kind = "directory" if node["mimeType"] == FOLDER else "file"
            raise AlreadyExists(f"a {kind} exists at {rel!r}", rel)
        parent = posixpath.dirname(rel)
        if not create_parents and parent:
            pnode = await self._lookup(parent)
            if pnode is None:
                raise NotFound(f"parent directory missing for {rel!r}", rel)
        await self._check_parents(parent, rel)
        await self._ensure_folder(rel)

    async def _makedirs(self, path, exist_ok=False):
        rel = self._relative(path)
        refuse_internal_write(rel)
        node = await self._lookup(rel)
        if node is not None:
            if node["mimeType"] != FOLDER:
                raise AlreadyExists(f"a file exists at {rel!r}", rel)
            if not exist_ok:
                raise AlreadyExists(f"directory exists: {rel!r}", rel)
            return
        await self._check_parents(posixpath.dirname(rel), rel)
        await self._ensure_folder(rel)

    async def _rmdir(self, path):
        rel = self._relative(path)
        refuse_internal_write(rel)
        if not rel:
            raise InvalidPath("cannot remove the storage root")
        node = await self._lookup(rel)
        if node is None:
            raise NotFound(f"no such directory: {rel!r}", rel)
        if node["mimeType"] != FOLDER:
            raise NotADirectory(f"not a directory: {rel!r}", rel)
        if await self._list_children(rel, node):
            raise DirectoryNotEmpty(f"directory not empty: {rel!r}", rel)
        await self._delete(rel, node)

    rmdir = sync_wrapper(_rmdir)

    async def _delete(self, rel: str, node: dict) -> None:
        """Delete (or trash) one Drive file; a folder goes with everything in it."""
        if self.trash:
            await self.client.call("PATCH", f"{self._api}/files/{node['id']}",
                                   params={"fields": "id"}, json_body={"trashed": True}, path=rel)
        else:
            await self.client.call("DELETE", f"{self._api}/files/{node['id']}",
                                   retried_ok=(404,), path=rel)
        self._forget(rel)

    async def _rm_file(self, path, **kwargs):
        rel = self._relative(path)
        refuse_internal_write(rel)
        node = await self._lookup(rel)
        if node is None:
            raise NotFound(f"no such file: {rel!r}", rel)
        if node["mimeType"] == FOLDER:
            raise IsADirectory(f"is a directory: {rel!r}", rel)
        await self._delete(rel, node)

    async def _rm(self, path, recursive=False, maxdepth=None, **kwargs):
        paths = path if isinstance(path, list) else [path]
        targets = []
        for p in paths:
            if isinstance(p, str) and has_glob(p):
                targets.extend(self._relative(x) for x in
                               await self._expand_path(p, recursive=recursive, maxdepth=maxdepth))
                continue
            rel = self._relative(p)
            refuse_internal_write(rel)
            if await self._lookup(rel) is None:
                raise NotFound(f"no such file or directory: {rel!r}", rel)
            targets.append(rel)
        for rel in sorted(set(targets), key=len, reverse=True):
            node = await self._lookup(rel)
            if node is None:
                continue  # went with a parent
            if node["mimeType"] == FOLDER:
                if recursive and maxdepth is None:
                    await self._remove_tree(rel, node)
                elif recursive:
                    for child in (await self._expand_path("/" + rel, recursive=True,
                                                          maxdepth=maxdepth))[::-1]:
                        crel = self._relative(child)
                        cnode = await self._lookup(crel)
                        if cnode is None:
                            continue
                        if cnode["mimeType"] == FOLDER:
                            await self._rmdir("/" + crel)
                        else:
                            await self._delete(crel, cnode)
                else:
                    await self._rmdir("/" + rel)
            else:
                await self._delete(rel, node)

    async def _remove_tree(self, rel: str, node: dict) -> None:
        """Remove a folder and its content, but never the root nor internal data in it."""
        internal = posixpath.join(rel, INTERNAL_DIR) if rel else INTERNAL_DIR
        listing = await self._list_children(rel, node)
        holds_internal = INTERNAL_DIR in listing
        if rel and not is_internal(rel) and not holds_internal:
            await self._delete(rel, node)  # Drive removes the whole subtree at once
            return
        children = [(posixpath.join(rel, n) if rel else n, c) for n, c in list(listing.items())
                    if internals_visible() or (posixpath.join(rel, n) if rel else n) != internal]
        await _bounded([self._remove_child(child, c) for child, c in children],
                       self.max_concurrency)
        if rel and (internals_visible() or not holds_internal):
            await self._delete(rel, node)

    async def _remove_child(self, rel: str, node: dict) -> None:
        if node["mimeType"] == FOLDER:
            await self._remove_tree(rel, node)
        else:
            await self._delete(rel, node)

    async def _touch(self, path, truncate=True, **kwargs):
        rel = self._relative(path)
        refuse_internal_write(rel)
        node = await self._lookup(rel)
        if truncate or node is None:
            await self._pipe_file("/" + rel, b"")
        else:
            await self.client.call("PATCH", f"{self._api}/files/{node['id']}",
                                   params={"fields": FILE_FIELDS}, json_body={}, path=rel)

    touch = sync_wrapper(_touch)

    # -- quota, revisions, duplicates ---------------------------------------------------------------

    async def _storage_quota(self) -> dict:
        resp = await self.client.call("GET", f"{self._api}/about", params={"fields": "storageQuota"})
        quota = resp.json().get("storageQuota", {})

        def number(key):
            return int(quota[key]) if quota.get(key) is not None else None

        return {"limit": number("limit"), "usage": number("usage"),
                "usage_in_drive": number("usageInDrive"),
                "usage_in_drive_trash": number("usageInDriveTrash")}

    def storage_quota(self) -> dict:
        """Drive's ``about.get`` ``storageQuota`` as numbers (``limit`` ``None`` = unlimited):
        ``limit``, ``usage``, ``usage_in_drive``, ``usage_in_drive_trash``."""
        return sync(self.loop, self._storage_quota)

    async def _revisions(self, path) -> list[dict]:
        rel = self._relative(path)
        hide_internal_path(rel)
        node = await self._file_node(rel)
        if self._is_native(node):
            return []
        out, token = [], None
        while True:
            params = {"fields": "nextPageToken,revisions(id,modifiedTime,keepForever,md5Checksum,size)",
                      "pageSize": "1000"}
            if token:
                params["pageToken"] = token
            resp = await self.client.call("GET", f"{self._api}/files/{node['id']}/revisions",
                                          params=params, path=rel)
            body = resp.json()
            out.extend(body.get("revisions", []))
            token = body.get("nextPageToken")
            if not token:
                break
        return [{"revision_id": r["id"], "modified": _timestamp(r.get("modifiedTime")),
                 "size": int(r.get("size") or 0), "md5": r.get("md5Checksum"),
                 "keep_forever": bool(r.get("keepForever"))} for r in reversed(out)]

    def revisions(self, path) -> list[dict]:
        """Drive's own revisions of a file, newest first: ``revision_id``, ``modified``,
        ``size``, ``md5``, ``keep_forever``."""
        return sync(self.loop, self._revisions, path)

    async def _read_revision(self, path, revision_id: str) -> bytes:
        rel = self._relative(path)
        hide_internal_path(rel)
        node = await self._file_node(rel)
        try:
            resp = await self.client.call(
                "GET", f"{self._api}/files/{node['id']}/revisions/{revision_id}",
                params={"alt": "media"}, path=rel)
        except NotFound:
            raise VersionNotFound(f"no revision {revision_id!r} of {rel!r}", rel) from None
        return resp.body

    def read_revision(self, path, revision_id: str) -> bytes:
        """The bytes of one revision."""
        return sync(self.loop, self._read_revision, path, revision_id)

    async def _keep_revision(self, path, revision_id: str, keep: bool = True) -> None:
        rel = self._relative(path)
        hide_internal_path(rel)
        node = await self._file_node(rel)
        try:
            await self.client.call(
                "PATCH", f"{self._api}/files/{node['id']}/revisions/{revision_id}",
                params={"fields": "id,keepForever"}, json_body={"keepForever": bool(keep)},
                path=rel)
        except NotFound:
            raise VersionNotFound(f"no revision {revision_id!r} of {rel!r}", rel) from None

    def keep_revision(self, path, revision_id: str, keep: bool = True) -> None:
        """Set ``keepForever`` on a revision (Drive then never prunes it)."""
        return sync(self.loop, self._keep_revision, path, revision_id, keep)

    async def _duplicate_names(self, path="") -> list[dict]:
        rel = self._relative(path)
        root = await self._lookup(rel)
        if root is None:
            raise NotFound(f"no such directory: {rel!r}", rel)
        groups, stack = [], [(rel, root)]
        while stack:
            folder_rel, folder = stack.pop()
            found = await self._query(f"{_quote(folder['id'])} in parents and trashed = false")
            by_name: dict[str, list[dict]] = {}
            for child in found:
                if child["display"] is not None:
                    by_name.setdefault(child["display"], []).append(child)
            for name, members in sorted(by_name.items()):
                child_rel = posixpath.join(folder_rel, name) if folder_rel else name
                members.sort(key=self._sort_key)
                if len(members) > 1:
                    groups.append({"path": "/" + child_rel, "files": members})
                for m in members:
                    if m["mimeType"] == FOLDER:
                        stack.append((child_rel, m))
        return groups

    def duplicate_names(self, path="") -> list[dict]:
        """Names held by several live Drive files below ``path``: ``[{"path", "files"}]``,
        the file shown first (the oldest)."""
        return sync(self.loop, self._duplicate_names, path)

    async def _merge_duplicate_names(self, path="", dry_run=False) -> dict:
        actions = []
        for group in await self._duplicate_names(path):
            keep, others = group["files"][0], group["files"][1:]
            base, ext = posixpath.splitext(keep["name"])
            parent_rel = posixpath.dirname(self._relative(group["path"]))
            number = 1
            for other in others:
                same = (other["mimeType"] == keep["mimeType"] != FOLDER
                        and other.get("md5Checksum") and other.get("md5Checksum") == keep.get("md5Checksum"))
                if same:
                    actions.append({"path": group["path"], "id": other["id"], "action": "trash"})
                    if not dry_run:
                        await self.client.call("PATCH", f"{self._api}/files/{other['id']}",
                                               params={"fields": "id"}, json_body={"trashed": True})
                else:
                    while True:  # the first free "name (n).ext"
                        number += 1
                        new_name = f"{base} ({number}){ext}"
                        taken = await self._lookup(posixpath.join(parent_rel, new_name)
                                                   if parent_rel else new_name)
                        if taken is None:
                            break
                    actions.append({"path": group["path"], "id": other["id"], "action": "rename",
                                    "new_name": new_name})
                    if not dry_run:
                        await self.client.call("PATCH", f"{self._api}/files/{other['id']}",
                                               params={"fields": "id"}, json_body={"name": new_name})
        if not dry_run:
            self.invalidate_cache()
        return {"merged": len(actions), "actions": actions, "dry_run": dry_run}

    def merge_duplicate_names(self, path="", dry_run=False) -> dict:
        """Make every name unique: extra copies with the same MD5 go to the trash, the others
        are renamed ``name (2).ext``... Nothing is deleted for good."""
        return sync(self.loop, self._merge_duplicate_names, path, dry_run)


def _range_end(header: str | None) -> int:
    """Bytes the server kept, from a 308's ``Range: bytes=0-N`` (none: 0)."""
    if not header:
        return 0
    return int(header.rsplit("-", 1)[1]) + 1


async def _bounded(coros: list, limit: int) -> list:
    """Run coroutines with at most ``limit`` at a time; raise the first error after all end."""
    semaphore = asyncio.Semaphore(max(1, limit))

    async def run(coro):
        async with semaphore:
            return await coro

    results = await asyncio.gather(*(run(c) for c in coros), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
