"""Google OAuth for the Drive backend: loopback + PKCE, web-server flow, service accounts, token store.

Contract:

* :func:`loopback_login` is the installed-app flow: a one-shot HTTP listener on
  ``127.0.0.1`` (random port), an authorization URL with PKCE (S256) and a random ``state``,
  the browser opened (or the URL printed / handed to ``url_callback``), the redirect caught,
  ``state`` checked, the code exchanged at ``token_uri`` with the verifier. It returns the
  token info and, unless ``store=None``, saves it in the :class:`TokenStore`.
* :func:`authorization_url` / :func:`exchange_code` are the web-server flow for the HTTP API
  (redirect to ``GOOGLE_REDIRECT_URI``; the server keeps ``state`` and the verifier).
* :class:`TokenStore`: one JSON file (``docs/formats/drive-token.md``), mode 0600, in the
  user config directory (``~/.config/aiofs/drive-token.json``), written atomically.
* :func:`build_credentials` turns backend options into google-auth credentials (user
  refresh token, a token file, a service account key, or a bare access token) and
  :class:`TokenSource` hands out access tokens, refreshed before expiry (google-auth's
  threshold) and once more when the server rejects one (401).
* Scopes: ``drive.file`` (default: only files this app created or the user opened with it)
  or ``drive`` (everything in the account).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import http.server
import json
import os
import secrets
import threading
import urllib.parse
import urllib.request
import webbrowser
from typing import Any, Callable

from aiofs.errors import AuthenticationFailed, BackendUnavailable, ConfigError, Timeout

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_REVOKE_URI = "https://oauth2.googleapis.com/revoke"
SCOPES = {
    "drive.file": "https://www.googleapis.com/auth/drive.file",
    "drive": "https://www.googleapis.com/auth/drive",
}
DEFAULT_SCOPES = (SCOPES["drive.file"],)
TOKEN_FORMAT = "aiofs-drive-token"
TOKEN_VERSION = 1

__all__ = ["TokenStore", "TokenSource", "WebServerFlow", "build_credentials", "loopback_login",
           "authorization_url", "exchange_code", "refresh_access_token", "revoke",
           "scope_urls", "default_token_path", "SCOPES", "DEFAULT_SCOPES"]


def scope_urls(scopes) -> list[str]:
    """``["drive.file"]`` or full URLs -> full scope URLs."""
    if isinstance(scopes, str):
        scopes = scopes.replace(",", " ").split()
    return [SCOPES.get(s, s) for s in (scopes or DEFAULT_SCOPES)]


def default_token_path() -> str:
    """``$AIOFS_DRIVE_TOKEN`` or ``<user config dir>/aiofs/drive-token.json``."""
    if os.environ.get("AIOFS_DRIVE_TOKEN"):
        return os.path.expanduser(os.environ["AIOFS_DRIVE_TOKEN"])
    import platformdirs

    return os.path.join(platformdirs.user_config_dir("aiofs"), "drive-token.json")


class TokenStore:
    """The token file: JSON, mode 0600, replaced atomically (temp file + rename)."""

    def __init__(self, path: str | None = None):
        self.path = os.path.expanduser(path) if path else default_token_path()

    def load(self) -> dict | None:
        """The stored token info, or ``None`` when there is no file."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ConfigError(f"Drive token file is not JSON: {self.path}: {exc}") from None
        if data.get("format") != TOKEN_FORMAT or data.get("version") != TOKEN_VERSION:
            raise ConfigError(f"{self.path} is not an aiofs Drive token file (version {TOKEN_VERSION})")
        return data

    def save(self, info: dict) -> None:
        """Write ``info`` (token, refresh_token, client, scopes, expiry) with mode 0600."""
        data = {"format": TOKEN_FORMAT, "version": TOKEN_VERSION,
                **{k: v for k, v in info.items() if k not in ("format", "version")}}
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        temp = f"{self.path}.tmp-{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise

    def delete(self) -> bool:
        """Remove the file; ``True`` if there was one."""
        try:
            os.unlink(self.path)
            return True
        except FileNotFoundError:
            return False


# -- token endpoint ----------------------------------------------------------------------------

def _post_form(url: str, form: dict, timeout: float = 60.0) -> dict:
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        raise AuthenticationFailed(
            f"token endpoint refused: {body.get('error', exc.code)}: "
            f"{body.get('error_description', '')}".rstrip(": ")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise BackendUnavailable(f"token endpoint unreachable: {exc}") from None


def _expiry(info: dict) -> str | None:
    if "expires_in" not in info:
        return None
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(info["expires_in"]))
    return when.isoformat(timespec="seconds")


def _token_info(reply: dict, client_id: str, client_secret: str | None, token_uri: str,
                scopes: list[str], refresh_token: str | None = None) -> dict:
    return {"token": reply["access_token"],
            "refresh_token": reply.get("refresh_token", refresh_token),
            "token_uri": token_uri, "client_id": client_id, "client_secret": client_secret,
            "scopes": reply.get("scope", " ".join(scopes)).split(), "expiry": _expiry(reply)}


def pkce_pair() -> tuple[str, str]:
    """``(verifier, S256 challenge)`` for PKCE (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def authorization_url(client_id: str, redirect_uri: str, scopes=DEFAULT_SCOPES,
                      auth_uri: str = GOOGLE_AUTH_URI, state: str | None = None,
                      pkce: bool = True) -> tuple[str, str, str | None]:
    """The web-server flow's first step: ``(url, state, code_verifier)``.

    Keep ``state`` and the verifier with the user's session; pass them to
    :func:`exchange_code` when Google redirects back to ``redirect_uri``.
    """
    state = state or secrets.token_urlsafe(24)
    params = {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code",
              "scope": " ".join(scope_urls(scopes)), "state": state, "access_type": "offline",
              "prompt": "consent", "include_granted_scopes": "true"}
    verifier = None
    if pkce:
        verifier, challenge = pkce_pair()
        params.update(code_challenge=challenge, code_challenge_method="S256")
    return f"{auth_uri}?{urllib.parse.urlencode(params)}", state, verifier


def exchange_code(code: str, client_id: str, client_secret: str | None, redirect_uri: str,
                  code_verifier: str | None = None, token_uri: str = GOOGLE_TOKEN_URI,
                  scopes=DEFAULT_SCOPES) -> dict:
    """Trade an authorization code for tokens; returns the token info to store."""
    form = {"grant_type": "authorization_code", "code": code, "client_id": client_id,
            "redirect_uri": redirect_uri}
    if client_secret:
        form["client_secret"] = client_secret
    if code_verifier:
        form["code_verifier"] = code_verifier
    reply = _post_form(token_uri, form)
    return _token_info(reply, client_id, client_secret, token_uri, scope_urls(scopes))


def refresh_access_token(info: dict) -> dict:
    """A new access token for stored token info (its refresh token stays)."""
    form = {"grant_type": "refresh_token", "refresh_token": info["refresh_token"],
            "client_id": info["client_id"]}
    if info.get("client_secret"):
        form["client_secret"] = info["client_secret"]
    reply = _post_form(info.get("token_uri") or GOOGLE_TOKEN_URI, form)
    return _token_info(reply, info["client_id"], info.get("client_secret"),
                       info.get("token_uri") or GOOGLE_TOKEN_URI, info.get("scopes") or [],
                       refresh_token=info["refresh_token"])


def revoke(token: str, revoke_uri: str = GOOGLE_REVOKE_URI) -> bool:
    """Revoke a token at Google (or the emulator); ``False`` if it was already invalid."""
    try:
        _post_form(revoke_uri, {"token": token})
        return True
    except AuthenticationFailed:
        return False


class WebServerFlow:
    """The web-server flow for the HTTP API, configured like the seed (environment).

    ``WebServerFlow.from_env()`` reads ``GOOGLE_CLIENT_ID``, ``GOOGLE_CLIENT_SECRET`` and
    ``GOOGLE_REDIRECT_URI``. :meth:`start` gives the URL to send the user to, plus the
    ``state`` and PKCE verifier to keep in the user's session; :meth:`finish` takes the
    query parameters Google appended to the redirect URI, checks ``state`` and returns the
    token info (save it with a :class:`TokenStore`, or per user in the server's storage).
    """

    def __init__(self, client_id: str, client_secret: str | None, redirect_uri: str,
                 scopes=DEFAULT_SCOPES, auth_uri: str = GOOGLE_AUTH_URI,
                 token_uri: str = GOOGLE_TOKEN_URI):
        if not client_id or not redirect_uri:
            raise ConfigError("the web-server flow needs a client id and a redirect URI "
                              "(GOOGLE_CLIENT_ID, GOOGLE_REDIRECT_URI)")
        self.client_id, self.client_secret = client_id, client_secret
        self.redirect_uri, self.scopes = redirect_uri, scope_urls(scopes)
        self.auth_uri, self.token_uri = auth_uri, token_uri

    @classmethod
    def from_env(cls, scopes=DEFAULT_SCOPES, **overrides) -> "WebServerFlow":
        """Client id, secret and redirect URI from the seed's environment variables."""
        options = {"client_id": os.environ.get("GOOGLE_CLIENT_ID", ""),
                   "client_secret": os.environ.get("GOOGLE_CLIENT_SECRET"),
                   "redirect_uri": os.environ.get("GOOGLE_REDIRECT_URI", ""), "scopes": scopes}
        options.update(overrides)
        return cls(**options)

    def start(self) -> tuple[str, str, str]:
        """``(authorization URL, state, code_verifier)``."""
        return authorization_url(self.client_id, self.redirect_uri, self.scopes, self.auth_uri)

    def finish(self, params: dict, state: str, code_verifier: str) -> dict:
        """Token info from the redirect's query parameters (``code``/``error``, ``state``)."""
        if params.get("state") != state:
            raise AuthenticationFailed("the authorization response's state does not match (CSRF?)")
        if "error" in params or "code" not in params:
            raise AuthenticationFailed(f"authorization refused: {params.get('error', 'no code')}")
        return exchange_code(params["code"], self.client_id, self.client_secret,
                             self.redirect_uri, code_verifier, self.token_uri, self.scopes)


class _Catcher(http.server.BaseHTTPRequestHandler):
    """Receives the one redirect of the loopback flow."""

    result: dict

    def do_GET(self):  # noqa: N802 (http.server's name)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if "code" not in query and "error" not in query:
            self.send_response(404)
            self.end_headers()
            return
        self.server.result = query  # type: ignore[attr-defined]
        ok = "code" in query
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        text = ("aiofs is linked to your Google account. You can close this tab." if ok
                else f"Authorization failed: {query.get('error')}. You can close this tab.")
        self.wfile.write(f"<html><body><p>{text}</p></body></html>".encode())

    def log_message(self, *args):  # keep the terminal clean
        pass


def loopback_login(client_id: str, client_secret: str | None, scopes=DEFAULT_SCOPES,
                   auth_uri: str = GOOGLE_AUTH_URI, token_uri: str = GOOGLE_TOKEN_URI,
                   open_browser: bool = True, url_callback: Callable[[str], Any] | None = None,
                   timeout: float = 300.0, store: TokenStore | None | str = "default",
                   host: str = "127.0.0.1", port: int = 0) -> dict:
    """The installed-app loopback flow with PKCE; returns (and stores) the token info.

    ``url_callback(url)`` receives the authorization URL (the CLI prints it; tests pass a
    "browser" that follows it). ``store="default"`` saves to the default token file,
    ``None`` saves nothing.
    """
    if not client_id:
        raise ConfigError("a Google OAuth client id is needed (GOOGLE_CLIENT_ID or --client-id)")
    server = http.server.HTTPServer((host, port), _Catcher)
    server.result = None  # type: ignore[attr-defined]
    server.timeout = 0.5
    redirect_uri = f"http://{host}:{server.server_address[1]}/"
    url, state, verifier = authorization_url(client_id, redirect_uri, scopes, auth_uri)
    deadline = datetime.datetime.now().timestamp() + timeout
    try:
        if url_callback is not None:
            url_callback(url)
        if open_browser:
            webbrowser.open(url, new=1, autoraise=True)
        while server.result is None:  # type: ignore[attr-defined]
            if datetime.datetime.now().timestamp() > deadline:
                raise Timeout(f"no authorization within {timeout:.0f} s")
            server.handle_request()
        result = server.result  # type: ignore[attr-defined]
    finally:
        server.server_close()
    if result.get("state") != state:
        raise AuthenticationFailed("the authorization response's state does not match (CSRF?)")
    if "error" in result:
        raise AuthenticationFailed(f"authorization refused: {result['error']}")
    info = exchange_code(result["code"], client_id, client_secret, redirect_uri, verifier,
                         token_uri, scopes)
    if store is not None:
        (TokenStore() if store == "default" else
         store if isinstance(store, TokenStore) else TokenStore(store)).save(info)
    return info


# -- credentials for the backend -------------------------------------------------------------------

def build_credentials(token: str | None = None, refresh_token: str | None = None,
                      client_id: str | None = None, client_secret: str | None = None,
                      token_uri: str | None = None, scopes=None, token_file: str | None = None,
                      service_account_file: str | None = None,
                      service_account_info: dict | None = None) -> "TokenSource":
    """A :class:`TokenSource` from backend options (first match wins):

    a service account key (file or info; JWT bearer grant), a refresh token with its client,
    a bare access token (no refresh), a token file, the default token file.
    """
    scopes = scope_urls(scopes)
    if service_account_file or service_account_info:
        from google.oauth2 import service_account

        if service_account_info is None:
            with open(os.path.expanduser(service_account_file), encoding="utf-8") as f:
                service_account_info = json.load(f)
        info = dict(service_account_info)
        if token_uri:
            info["token_uri"] = token_uri
        creds = service_account.Credentials.from_service_account_info(info, scopes=scopes)
        return TokenSource(creds)
    if refresh_token:
        return TokenSource(_user_credentials(token, refresh_token, client_id, client_secret,
                                             token_uri or GOOGLE_TOKEN_URI, scopes))
    if token:
        return TokenSource(None, static_token=token)
    store = TokenStore(token_file)
    info = store.load()
    if info is None:
        raise AuthenticationFailed(f"no Drive credentials: run `aiofs auth login` (no token file "
                                   f"at {store.path})")
    creds = _user_credentials(info.get("token"), info.get("refresh_token"),
                              client_id or info.get("client_id"),
                              client_secret or info.get("client_secret"),
                              token_uri or info.get("token_uri") or GOOGLE_TOKEN_URI,
                              info.get("scopes") or scopes, info.get("expiry"))
    return TokenSource(creds, store=store)


def _user_credentials(token, refresh_token, client_id, client_secret, token_uri, scopes,
                      expiry: str | None = None):
    from google.oauth2.credentials import Credentials

    # Built directly: from_authorized_user_info would reset token_uri to Google's.
    creds = Credentials(token=token, refresh_token=refresh_token, token_uri=token_uri,
                        client_id=client_id, client_secret=client_secret, scopes=list(scopes))
    if token and expiry:
        when = datetime.datetime.fromisoformat(expiry)
        # google-auth compares naive UTC datetimes
        creds.expiry = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return creds


class TokenSource:
    """Hands out access tokens; refreshes (in a worker thread) before expiry or on demand."""

    def __init__(self, credentials=None, static_token: str | None = None,
                 store: TokenStore | None = None):
        self.credentials = credentials
        self.static_token = static_token
        self.store = store
        self._lock: asyncio.Lock | None = None
        self.refresh_count = 0

    @property
    def can_refresh(self) -> bool:
        """Whether a new access token can be had (not a bare token)."""
        return self.credentials is not None

    def _refresh_sync(self) -> None:
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        try:
            self.credentials.refresh(Request())
        except google.auth.exceptions.RefreshError as exc:
            raise AuthenticationFailed(f"Drive token refresh refused: {exc}") from None
        except google.auth.exceptions.TransportError as exc:
            raise BackendUnavailable(f"Drive token endpoint unreachable: {exc}") from None
        self.refresh_count += 1
        if self.store is not None:  # keep the stored access token fresh for the next process
            info = self.store.load() or {}
            expiry = self.credentials.expiry
            info.update(token=self.credentials.token, expiry=None if expiry is None else
                        expiry.replace(tzinfo=datetime.timezone.utc).isoformat(timespec="seconds"))
            self.store.save(info)

    async def token(self, force_refresh: bool = False, rejected: str | None = None) -> str:
        """A valid access token; ``force_refresh`` after the server rejected ``rejected``."""
        if self.credentials is None:
            return self.static_token
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            stale = not self.credentials.valid
            if force_refresh and self.credentials.token != rejected:
                stale = stale  # another request already refreshed it meanwhile
            elif force_refresh:
                stale = True
            if stale:
                await asyncio.get_running_loop().run_in_executor(None, self._refresh_sync)
        return self.credentials.token


# -- helpers for `aiofs auth status` / `aiofs auth logout` ------------------------------------------

def token_status(path: str | None = None) -> dict:
    """What the token file says: ``linked``, ``path``, ``scopes``, ``expiry``, ``expired``,
    ``client_id``, ``token_uri`` (no secret is returned)."""
    store = TokenStore(path)
    info = store.load()
    if info is None:
        return {"linked": False, "path": store.path}
    expiry = info.get("expiry")
    expired = None
    if expiry:
        expired = datetime.datetime.fromisoformat(expiry) <= datetime.datetime.now(datetime.timezone.utc)
    mode = os.stat(store.path).st_mode & 0o777
    return {"linked": bool(info.get("refresh_token") or info.get("token")), "path": store.path,
            "mode": f"{mode:04o}", "scopes": info.get("scopes") or [], "expiry": expiry,
            "expired": expired, "client_id": info.get("client_id"),
            "token_uri": info.get("token_uri"), "has_refresh_token": bool(info.get("refresh_token"))}


def revoke_uri_for(token_uri: str | None) -> str:
    """Google's revoke endpoint, or ``/revoke`` next to a custom (emulator) token endpoint."""
    if not token_uri or token_uri == GOOGLE_TOKEN_URI:
        return GOOGLE_REVOKE_URI
    return token_uri.rsplit("/", 1)[0] + "/revoke"


def logout(path: str | None = None, revoke_tokens: bool = True) -> dict:
    """Revoke the stored refresh token (best effort) and delete the token file."""
    store = TokenStore(path)
    info = store.load()
    revoked = False
    if info is not None and revoke_tokens:
        token = info.get("refresh_token") or info.get("token")
        if token:
            try:
                revoked = revoke(token, revoke_uri_for(info.get("token_uri")))
            except BackendUnavailable:
                revoked = False  # offline: the file still goes
    return {"path": store.path, "removed": store.delete(), "revoked": revoked}
