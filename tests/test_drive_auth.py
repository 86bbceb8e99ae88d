"""Drive OAuth against the emulator: the loopback flow end to end with a test browser, PKCE,
refresh on expiry, the web-server flow, service accounts, the token file, `aiofs auth`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from aiofs.backends.drive import DriveBackend
from aiofs.backends.drive import auth
from aiofs.errors import AuthenticationFailed
from aiofs.testing.drive_emulator import (
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SCOPE_FILE, DriveEmulator,
)


@pytest.fixture
def emu():
    with DriveEmulator() as emulator:
        yield emulator


def browser(url: str) -> threading.Thread:
    """A test browser: opens ``url`` and follows the redirect to the loopback listener."""
    result = {}

    def run():
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # urllib follows the 302
                result["status"] = resp.status
                result["final_url"] = resp.geturl()
                result["body"] = resp.read()
        except urllib.error.HTTPError as exc:  # the listener's error page (consent denied)
            result["status"] = exc.code
            result["final_url"] = exc.geturl()
            result["body"] = exc.read()

    thread = threading.Thread(target=run, daemon=True)
    thread.result = result
    thread.start()
    return thread


def login(emu, token_file, scopes=("drive.file",)):
    opened = []

    def callback(url):
        opened.append(browser(url))

    info = auth.loopback_login(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, scopes=scopes,
                               auth_uri=emu.auth_uri, token_uri=emu.token_uri,
                               open_browser=False, url_callback=callback, timeout=30,
                               store=auth.TokenStore(str(token_file)))
    opened[0].join(30)
    return info, opened[0].result


def test_loopback_flow_end_to_end_then_the_backend_uses_the_token_file(emu, tmp_path):
    token_file = tmp_path / "config" / "drive-token.json"
    info, page = login(emu, token_file)
    assert page["status"] == 200 and b"linked" in page["body"]
    assert page["final_url"].startswith("http://127.0.0.1:")
    assert info["refresh_token"] and info["token"]
    assert info["scopes"] == [SCOPE_FILE]
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    stored = json.loads(token_file.read_text())
    assert stored["format"] == "aiofs-drive-token" and stored["version"] == 1
    fs = DriveBackend(token_file=str(token_file), api_url=emu.url, retry_backoff_base=0.01)
    fs.pipe_file("hello.txt", b"linked")
    assert fs.cat_file("hello.txt") == b"linked"
    # the emulator saw a real authorization: code exchange with a PKCE verifier
    assert emu.stats["oauth.authorize"] == 1 and emu.stats["oauth.token"] >= 1


def test_expired_token_is_refreshed_and_the_file_updated(emu, tmp_path):
    token_file = tmp_path / "t.json"
    login(emu, token_file)
    fs = DriveBackend(token_file=str(token_file), api_url=emu.url)
    fs.pipe_file("a", b"1")
    before = json.loads(token_file.read_text())["token"]
    emu.expire_tokens()
    assert fs.cat_file("a") == b"1"  # 401 -> refresh once -> retried transparently
    assert fs.client.refreshes == 1
    after = json.loads(token_file.read_text())["token"]
    assert after != before
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600


def test_denied_consent_fails_with_authentication_failed(emu, tmp_path):
    emu.set_consent("deny")
    with pytest.raises(AuthenticationFailed) as info:
        login(emu, tmp_path / "t.json")
    assert "access_denied" in str(info.value)
    assert not (tmp_path / "t.json").exists()


def test_pkce_verifier_is_required(emu):
    url, state, verifier = auth.authorization_url(DEFAULT_CLIENT_ID, "http://127.0.0.1:9/",
                                                  auth_uri=emu.auth_uri)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(url, timeout=30)
    location = info.value.headers["Location"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["state"] == state
    with pytest.raises(AuthenticationFailed):  # the code without its verifier is refused
        auth.exchange_code(query["code"], DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
                           "http://127.0.0.1:9/", "wrong-verifier", emu.token_uri)


def test_web_server_flow_from_the_environment(emu, monkeypatch):
    redirect = "https://app.example.com/api/drive/callback"
    emu.register_client("seed-client", "seed-secret", [redirect])
    monkeypatch.setenv("GOOGLE_CLIENT_ID", "seed-client")
    monkeypatch.setenv("GOOGLE_CLIENT_SECRET", "seed-secret")
    monkeypatch.setenv("GOOGLE_REDIRECT_URI", redirect)
    flow = auth.WebServerFlow.from_env(auth_uri=emu.auth_uri, token_uri=emu.token_uri)
    url, state, verifier = flow.start()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.build_opener(NoRedirect).open(url, timeout=30)
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(info.value.headers["Location"]).query))
    with pytest.raises(AuthenticationFailed):
        flow.finish({**params, "state": "forged"}, state, verifier)
    tokens = flow.finish(params, state, verifier)
    assert tokens["refresh_token"] and tokens["client_id"] == "seed-client"


def test_web_server_flow(emu):
    redirect = "https://app.example.com/oauth/callback"
    emu.register_client("web-client", "web-secret", [redirect])
    url, state, verifier = auth.authorization_url("web-client", redirect, scopes=["drive"],
                                                  auth_uri=emu.auth_uri)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.build_opener(NoRedirect).open(url, timeout=30)
    location = info.value.headers["Location"]
    assert location.startswith(redirect + "?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["state"] == state
    tokens = auth.exchange_code(query["code"], "web-client", "web-secret", redirect, verifier,
                                emu.token_uri, scopes=["drive"])
    assert tokens["refresh_token"]
    fs = DriveBackend(api_url=emu.url, token_uri=emu.token_uri, client_id="web-client",
                      client_secret="web-secret", refresh_token=tokens["refresh_token"])
    assert fs.ls("/") == []
    # an unregistered redirect URI is refused
    bad, _, _ = auth.authorization_url("web-client", "https://evil.example/cb", auth_uri=emu.auth_uri)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad, timeout=30)
    assert info.value.code == 400


def test_service_account_jwt_bearer(emu):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = "robot@aiofs-test.iam.gserviceaccount.com"
    emu.register_service_account(email, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    info = {"type": "service_account", "project_id": "aiofs-test", "private_key_id": "k1",
            "private_key": pem, "client_email": email, "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token"}
    fs = DriveBackend(service_account_info=info, api_url=emu.url, token_uri=emu.token_uri,
                      scopes=["drive"])
    fs.pipe_file("sa.txt", b"robot")
    assert fs.cat_file("sa.txt") == b"robot"
    # a key the emulator does not know is refused
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info["private_key"] = other.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode()
    with pytest.raises(AuthenticationFailed):
        DriveBackend(service_account_info=info, api_url=emu.url, token_uri=emu.token_uri).ls("/")


def test_no_credentials_is_a_clear_error(tmp_path):
    with pytest.raises(AuthenticationFailed) as info:
        DriveBackend(token_file=str(tmp_path / "missing.json"))
    assert "aiofs auth login" in str(info.value)


def test_cli_auth_login_status_logout(emu, tmp_path):
    token_file = tmp_path / "cli-token.json"
    env = {**os.environ, "GOOGLE_CLIENT_ID": DEFAULT_CLIENT_ID,
           "GOOGLE_CLIENT_SECRET": DEFAULT_CLIENT_SECRET}
    cli = [sys.executable, "-m", "aiofs.cli"]
    proc = subprocess.Popen(cli + ["auth", "login", "--no-browser", "--token-file", str(token_file),
                                   "--auth-uri", emu.auth_uri, "--token-uri", emu.token_uri,
                                   "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "Open this URL" in proc.stdout.readline()
        url = proc.stdout.readline().strip()
        page = browser(url)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    page.join(30)
    assert proc.returncode == 0, err
    assert "linked" in out and page.result["status"] == 200
    status = subprocess.run(cli + ["auth", "status", "--json", "--token-file", str(token_file)],
                            capture_output=True, text=True, env=env)
    data = json.loads(status.stdout)
    assert status.returncode == 0 and data["linked"] and data["mode"] == "0600"
    assert data["scopes"] == [SCOPE_FILE]
    refresh = json.loads(token_file.read_text())["refresh_token"]
    out = subprocess.run(cli + ["auth", "logout", "--token-file", str(token_file)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "revoked" in out.stdout
    assert not token_file.exists()
    with pytest.raises(AuthenticationFailed):  # the refresh token was revoked at the server
        auth.refresh_access_token({"refresh_token": refresh, "client_id": DEFAULT_CLIENT_ID,
                                   "client_secret": DEFAULT_CLIENT_SECRET,
                                   "token_uri": emu.token_uri})
    status = subprocess.run(cli + ["auth", "status", "--token-file", str(token_file)],
                            capture_output=True, text=True, env=env)
    assert status.returncode == 1 and "not linked" in status.stdout


def test_tokens_are_refreshed_before_they_expire():
    # google-auth treats a token as stale a few minutes before its expiry: with 2-minute
    # tokens every call refreshes first, and the server never has to reject one (no 401).
    with DriveEmulator(token_lifetime=120) as emu:
        fs = DriveBackend(**emu.backend_options())
        fs.pipe_file("a", b"1")
        assert fs.cat_file("a") == b"1"
        assert fs.credentials.refresh_count >= 2
        assert fs.client.refreshes == 0
