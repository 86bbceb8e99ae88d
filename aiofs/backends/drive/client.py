"""The Drive v3 HTTP client: one ``_call`` with retries, one error table.

Contract (modelled on gcsfs ``_call`` / ``retry.py``):

* Every request goes through :meth:`DriveClient.call`, which adds the bearer token, retries
  5xx, 429, 403 with a rate-limit reason and dropped connections with truncated exponential
  backoff and jitter (``retry_backoff_base`` * 2^attempt, capped at ``retry_backoff_max``,
  then a random point in its upper half), refreshes the token once on 401, and never retries
  anything else. ``storageQuotaExceeded`` raises ``STORAGE_QUOTA_EXCEEDED`` at once.
* A request whose earlier attempt may have been applied (a 5xx or a dropped connection)
  accepts a "that already happened" status (``retried_ok``): a 404 for a delete, a 409 for
  a create with an id we generated (only our own earlier attempt can have used it). That is
  how retries never fail on their own success, nor create a duplicate.
* :func:`drive_error` is the one table from Drive's ``{"error": {"errors": [{"reason"}]}}``
  to :mod:`aiofs.errors`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from aiofs.errors import (
    AiofsError, AlreadyExists, AuthenticationFailed, BackendUnavailable, InvalidArgument,
    NotFound, PermissionDenied, RateLimited, StorageQuotaExceeded, Timeout,
)

log = logging.getLogger("aiofs.drive")

RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded",
                                "sharingRateLimitExceeded"})
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_EXCEPTIONS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                        asyncio.TimeoutError, ConnectionError)


@dataclass
class Response:
    """What a request returned (the body is read whole)."""

    status: int
    headers: Any
    body: bytes
    attempts: int = 1
    ambiguous: bool = False  # an earlier attempt may have been applied
    reason: str | None = None

    def json(self) -> Any:
        """The body parsed as JSON (``{}`` when empty)."""
        return json.loads(self.body) if self.body else {}


@dataclass
class DriveHTTPError(Exception):
    """A non-retryable (or exhausted) Drive error before mapping."""

    status: int
    reason: str
    message: str
    extra: dict = field(default_factory=dict)


def parse_error(body: bytes) -> tuple[str, str]:
    """``(reason, message)`` from Drive's error body (anything else: empty reason)."""
    try:
        err = json.loads(body).get("error", {})
    except (ValueError, AttributeError):
        return "", body[:200].decode("utf-8", "replace")
    if isinstance(err, str):  # OAuth endpoints: {"error": "invalid_grant", ...}
        return err, str(json.loads(body).get("error_description", err))
    errors = err.get("errors") or [{}]
    return str(errors[0].get("reason", "")), str(err.get("message", ""))


def drive_error(status: int, reason: str, message: str, path: str | None = None) -> AiofsError:
    """The aiofs error for a Drive error response (the one error table)."""
    detail = f"Drive: {message or reason or status} (HTTP {status}{', ' + reason if reason else ''})"
    if reason == "storageQuotaExceeded":
        return StorageQuotaExceeded(detail, path)
    if status == 401:
        return AuthenticationFailed(detail, path)
    if status == 404:
        return NotFound(detail, path)
    if status == 409:
        return AlreadyExists(detail, path)
    if status == 429 or reason in RATE_LIMIT_REASONS:
        return RateLimited(detail, path)
    if status == 403:
        return PermissionDenied(detail, path)
    if status in (400, 411, 413, 416):
        return InvalidArgument(detail, path)
    if status == 408 or status == 504:
        return Timeout(detail, path)
    return BackendUnavailable(detail, path)


def retryable(status: int, reason: str) -> bool:
    """Whether a response is worth another attempt."""
    if reason == "storageQuotaExceeded":
        return False
    if status in RETRY_STATUSES:
        return True
    return status == 403 and reason in RATE_LIMIT_REASONS


class DriveClient:
    """aiohttp session + credentials + retry policy for one ``DriveBackend``.

    ``credentials`` is an :class:`aiofs.backends.drive.auth.TokenSource`. Counters:
    ``requests`` (attempts sent), ``retries``, ``refreshes``.
    """

    def __init__(self, credentials, retries: int = 6, backoff_base: float = 1.0,
                 backoff_max: float = 32.0, timeout: float = 300.0):
        self.credentials = credentials
        self.max_retries = int(retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.timeout = float(timeout)
        self.session: aiohttp.ClientSession | None = None
        self._session_lock: asyncio.Lock | None = None
        self.requests = 0
        self.retries = 0
        self.refreshes = 0

    async def get_session(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use in the running loop."""
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=30),
                connector=aiohttp.TCPConnector(limit=64, force_close=False),
            )
            # aiohttp silently re-sends an idempotent request once when a kept-alive
            # connection drops; that hides from us that the first attempt may have been
            # applied. Every retry goes through call() instead (counted, with backoff).
            if hasattr(self.session, "_retry_connection"):
                self.session._retry_connection = False
        return self.session

    async def close(self) -> None:
        """Close the session (its connections)."""
        if self.session is not None and not self.session.closed:
            await self.session.close()

    def backoff_delay(self, attempt: int) -> float:
        """Truncated exponential backoff with jitter: a random point in the upper half."""
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return cap / 2 + random.uniform(0, cap / 2)

    async def backoff(self, attempt: int) -> None:
        """Count a retry and sleep for :meth:`backoff_delay`."""
        self.retries += 1
        await asyncio.sleep(self.backoff_delay(attempt))

    async def send(self, method: str, url: str, *, params=None, json_body=None, data=None,
                   headers=None) -> Response:
        """One attempt (plus one token refresh on 401); transport errors propagate."""
        refreshed = False
        while True:
            token = await self.credentials.token()
            all_headers = {"Authorization": f"Bearer {token}"}
            if headers:
                all_headers.update(headers)
            session = await self.get_session()
            self.requests += 1
            async with session.request(method, url, params=params, json=json_body, data=data,
                                       headers=all_headers, allow_redirects=False) as resp:
                body = await resp.read()
                response = Response(resp.status, resp.headers, body)
            if response.status == 401 and not refreshed and self.credentials.can_refresh:
                # The token expired or was revoked early: refresh once, then try again.
                refreshed = True
                self.refreshes += 1
                await self.credentials.token(force_refresh=True, rejected=token)
                continue
            return response

    async def call(self, method: str, url: str, *, params=None, json_body=None, data=None,
                   headers=None, ok: tuple[int, ...] = (), retried_ok: tuple[int, ...] = (),
                   path: str | None = None) -> Response:
        """A request with the retry policy; raises an aiofs error when it fails for good.

        ``ok``: statuses (>= 400) returned instead of raised. ``retried_ok``: statuses that
        mean an attempt of this request was already applied (returned, not raised).
        """
        attempt = 0
        ambiguous = False
        while True:
            try:
                response = await self.send(method, url, params=params, json_body=json_body,
                                           data=data, headers=headers)
            except TRANSIENT_EXCEPTIONS as exc:
                # The request may or may not have reached the server and been applied.
                ambiguous = True
                if attempt >= self.max_retries:
                    raise BackendUnavailable(f"Drive unreachable after {attempt + 1} attempts: "
                                             f"{type(exc).__name__}: {exc}", path) from exc
                log.debug("drive %s %s: %s, retrying", method, url, exc)
                await self.backoff(attempt)
                attempt += 1
                continue
            status = response.status
            response.attempts, response.ambiguous = attempt + 1, ambiguous
            if status < 400 or status in ok:
                return response
            reason, message = parse_error(response.body)
            response.reason = reason
            if status in retried_ok:
                # Only an earlier attempt of ours can explain it (an id we generated is
                # taken; what we delete is gone): the request has had its effect.
                return response
            if retryable(status, reason) and attempt < self.max_retries:
                if status >= 500:
                    ambiguous = True  # a 5xx may come after the change was made
                log.debug("drive %s %s: %s %s, retrying", method, url, status, reason)
                await self.backoff(attempt)
                attempt += 1
                continue
            raise drive_error(status, reason, message, path)
