"""A Google Drive v3 emulator over real HTTP on loopback, for offline tests of Drive clients.

Three ways to run it:

* ``python -m aiofs.testing.drive_emulator --port 8765`` (prints the URL and the options);
* ``with DriveEmulator() as emu: DriveBackend(**emu.backend_options())``: a server in a
  background thread, stopped when the block ends;
* the pytest fixture :func:`drive_emulator` (``from aiofs.testing.drive_emulator import
  drive_emulator`` in a conftest or test module).

``emu.url`` is the base URL (API at ``/drive/v3``, uploads at ``/upload/drive/v3``, OAuth at
``/o/oauth2/auth`` and ``/token``); ``emu.backend_options()`` the keyword arguments that
point a ``DriveBackend`` at it, credentials included; ``emu.issue_token()`` a valid bearer
token for raw HTTP tests. ``emu.faults`` injects failures, ``emu.stats`` counts requests,
``emu.upload_bytes`` counts uploaded body bytes. Server behaviour: see
:mod:`aiofs.testing.drive_emulator.server`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

from aiofs.testing.drive_emulator.server import (
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FOLDER, NATIVE_TYPES, SCOPE_DRIVE, SCOPE_FILE,
    DriveState, Faults, build_app,
)

__all__ = ["DriveEmulator", "drive_emulator", "Faults", "FOLDER", "NATIVE_TYPES",
           "SCOPE_DRIVE", "SCOPE_FILE", "DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET"]


class DriveEmulator:
    """An in-memory Drive v3 server on ``127.0.0.1`` in a background thread.

    Options: ``port`` (0 picks a free one), ``latency`` (seconds added to every request,
    for benchmarks), ``quota_limit`` (bytes; ``None`` unlimited), ``token_lifetime``
    (seconds), ``short_page_rate`` (share of list pages cut short), ``partial_keep_rate``
    (share of resumable chunks of which the server keeps less than it got), ``seed``.
    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", latency: float = 0.0,
                 quota_limit: int | None = 15 * 1024 ** 3, token_lifetime: float = 3600.0,
                 short_page_rate: float = 0.1, partial_keep_rate: float = 0.1,
                 max_revisions: int = 100, seed: int = 0):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the emulator only listens on loopback addresses")
        self.host = host
        self.port = port
        self.state = DriveState(quota_limit=quota_limit, token_lifetime=token_lifetime,
                                latency=latency, short_page_rate=short_page_rate,
                                partial_keep_rate=partial_keep_rate,
                                max_revisions=max_revisions, seed=seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "DriveEmulator":
        """Start serving; returns once the port is bound."""
        self._thread = threading.Thread(target=self._serve, name="drive-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        from aiohttp import web

        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def startup():
            self._runner = web.AppRunner(build_app(self.state), access_log=None,
                                         handler_cancellation=True)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.state.base_url = f"http://{host}:{self.port}"

        try:
            loop.run_until_complete(startup())
        except BaseException as exc:  # report bind errors to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> "DriveEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run_in_loop(self, fn, *args):
        """Run ``fn(*args)`` in the server's loop (state is only touched there) and return."""
        async def call():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(30)

    # -- what clients need ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self.state.base_url

    @property
    def token_uri(self) -> str:
        """The OAuth token endpoint (``/token``)."""
        return f"{self.url}/token"

    @property
    def auth_uri(self) -> str:
        """The OAuth authorization endpoint (``/o/oauth2/auth``)."""
        return f"{self.url}/o/oauth2/auth"

    @property
    def faults(self) -> Faults:
        """Fault injection settings (see :class:`~aiofs.testing.drive_emulator.server.Faults`)."""
        return self.state.faults

    @property
    def stats(self):
        """Requests per operation name (``files.list``, ``upload.multipart``...)."""
        return self.state.stats

    @property
    def upload_bytes(self) -> int:
        """Body bytes the upload endpoints received (re-sent bytes included)."""
        return self.state.upload_bytes

    def reset_counters(self) -> None:
        """Zero ``stats`` and ``upload_bytes``."""
        def reset():
            self.state.stats.clear()
            self.state.upload_bytes = 0
        self.run_in_loop(reset)

    def issue_token(self, scopes: tuple[str, ...] = (SCOPE_DRIVE,)) -> str:
        """A valid bearer access token (expires after ``token_lifetime``)."""
        def issue():
            token = "ya29.emu-direct-" + hashlib.sha1(str(time.time_ns()).encode()).hexdigest()
            self.state.access_tokens[token] = {"scopes": list(scopes), "client_id": DEFAULT_CLIENT_ID,
                                               "expires": time.time() + self.state.token_lifetime}
            return token
        return self.run_in_loop(issue)

    def issue_refresh_token(self, scopes: tuple[str, ...] = (SCOPE_DRIVE,)) -> str:
        """A refresh token for the emulator's OAuth client, as an authorization would give."""
        def issue():
            token = "1//emu-direct-" + hashlib.sha1(str(time.time_ns()).encode()).hexdigest()
            self.state.refresh_tokens[token] = {"client_id": DEFAULT_CLIENT_ID,
                                                "scopes": list(scopes)}
            return token
        return self.run_in_loop(issue)

    def backend_options(self, scopes: tuple[str, ...] = (SCOPE_DRIVE,), **extra: Any) -> dict:
        """Keyword arguments for ``DriveBackend`` pointing at this emulator.

        Credentials are a fresh refresh token of the emulator's client (the backend gets
        access tokens from ``/token`` like from Google's), and the retry backoff is made
        short so tests with injected faults stay fast.
        """
        options = {
            "api_url": self.url,
            "token_uri": self.token_uri,
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "refresh_token": self.issue_refresh_token(scopes),
            "scopes": list(scopes),
            "retry_backoff_base": 0.002,
            "retry_backoff_max": 0.05,
        }
        options.update(extra)
        return options

    def register_client(self, client_id: str, client_secret: str,
                        redirect_uris: list[str] = ()) -> None:
        """Register another OAuth client (web-server flow: its allowed redirect URIs)."""
        self.run_in_loop(lambda: self.state.clients.__setitem__(
            client_id, {"secret": client_secret, "redirect_uris": list(redirect_uris)}))

    def register_service_account(self, email: str, public_key_pem: bytes) -> None:
        """Accept JWT bearer assertions signed by this service account's key."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        key = load_pem_public_key(public_key_pem)
        self.run_in_loop(lambda: self.state.service_accounts.__setitem__(email, key))

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired (the next call gets 401)."""
        def expire():
            for record in self.state.access_tokens.values():
                record["expires"] = 0.0
        self.run_in_loop(expire)

    def set_consent(self, consent: str) -> None:
        """``"allow"`` (default) or ``"deny"``: what the authorization endpoint answers."""
        self.run_in_loop(lambda: setattr(self.state, "consent", consent))

    def set_quota(self, limit: int | None) -> None:
        """Change the storage quota (bytes; ``None`` unlimited)."""
        self.run_in_loop(lambda: setattr(self.state, "quota_limit", limit))

    def set_latency(self, seconds: float) -> None:
        """Change the per-request latency."""
        self.run_in_loop(lambda: setattr(self.state, "latency", float(seconds)))

    def expire_upload_sessions(self) -> None:
        """Forget every resumable session (their next chunk gets 404)."""
        self.run_in_loop(self.state.sessions.clear)

    # -- looking inside ------------------------------------------------------------------------

    def find_folder(self, name: str, parent_id: str | None = None) -> str | None:
        """The id of a live folder named exactly ``name`` (under ``parent_id``, default root)."""
        def find():
            parent = parent_id or self.state.root_id
            for f in self.state.files.values():
                if f["mimeType"] == FOLDER and f["name"] == name and f["parents"] == [parent] \
                        and not self.state.is_trashed(f):
                    return f["id"]
            return None
        return self.run_in_loop(find)

    def snapshot(self, trashed: bool = False) -> list[dict]:
        """Every file but the root: ``id, name, mimeType, parent, trashed, size, md5, path``."""
        return self.run_in_loop(self.state.snapshot, trashed)

    def duplicates(self) -> list[tuple[str, str]]:
        """``(parent id, name)`` pairs held by more than one live file: what retries must
        never create."""
        return self.run_in_loop(self.state.duplicates)

    def add_file(self, name: str, content: bytes | None = None, parent_id: str | None = None,
                 mime_type: str | None = None, text: str | None = None,
                 by_app: bool = False) -> str:
        """Create a file as another client would (the web UI: ``by_app=False``).

        ``mime_type`` a Google-native type with ``text`` makes a Doc/Sheet/Slides file;
        ``FOLDER`` a folder. Returns the id. Duplicate names are allowed, as on Drive.
        """
        def add():
            meta = {"name": name, "parents": [parent_id or self.state.root_id]}
            if mime_type:
                meta["mimeType"] = mime_type
            body = text.encode() if text is not None else content
            if mime_type == FOLDER:
                body = None
            elif body is None and mime_type not in NATIVE_TYPES:
                body = b""
            f = self.state.create(meta, body, None)
            f["app_created"] = by_app
            return f["id"]
        return self.run_in_loop(add)


def drive_emulator_fixture():
    """The body of the :func:`drive_emulator` pytest fixture (a running emulator)."""
    with DriveEmulator() as emu:
        yield emu


try:
    import pytest

    @pytest.fixture
    def drive_emulator():
        """A running :class:`DriveEmulator`, stopped after the test."""
        yield from drive_emulator_fixture()
except ImportError:  # pytest is optional for users of the emulator itself
    pass
