"""Send one signed webhook request (Standard Webhooks) through the SSRF-guarded connection pool.

Headers: ``webhook-id`` (the event id, stable across retries), ``webhook-timestamp`` (unix seconds, new per
attempt) and ``webhook-signature`` = ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed by the ``whsec_``
secret. Redirects are not followed (a 3xx is a failure, as the spec says). Every connection resolves the host and
checks each address with the same policy as image URLs (``GUARDQ_WEBHOOK_ALLOWED_NETWORKS`` adds networks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpcore

from schemas.errors import ErrorCode, GuardqError, PermanentError
from schemas.netpolicy import AddressPolicy
from schemas.webhooks import secret_bytes
from worker.sources.netguard import GuardedBackend

USER_AGENT = "guardq-webhooks/0.1"
MAX_RESPONSE_BYTES = 64 * 1024


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    mac = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class SendResult:
    """What one attempt got: an HTTP status, or an error (then ``status`` is None)."""

    status: int | None
    retry_after: float | None = None
    error: str | None = None
    permanent: bool = False  # the target itself is refused (SSRF guard, bad URL): retrying cannot help

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else (self.error or "no response")


class WebhookSender:
    """One connection pool per webhook worker process, shared by its threads."""

    def __init__(
        self, policy: AddressPolicy, *, timeout_s: float, connect_timeout_s: float, allow_http: bool, pool: int
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            network_backend=GuardedBackend(policy),
            max_connections=pool,
            max_keepalive_connections=pool,
            retries=0,
        )
        self._timeout_s = timeout_s
        self._connect_timeout_s = min(connect_timeout_s, timeout_s)
        self._schemes = {"https", "http"} if allow_http else {"https"}

    def close(self) -> None:
        self._pool.close()

    def send(self, url: str, *, msg_id: str, body: bytes, secret: str) -> SendResult:
        if urlsplit(url).scheme.lower() not in self._schemes or not urlsplit(url).hostname:
            return SendResult(None, error=f"target URL {url[:100]!r} is not allowed", permanent=True)
        timestamp = int(datetime.now(UTC).timestamp())
        headers = [
            (b"Content-Type", b"application/json"),
            (b"User-Agent", USER_AGENT.encode()),
            (b"webhook-id", msg_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", sign(secret, msg_id, timestamp, body).encode()),
        ]
        try:
            return self._post(url, headers, body)
        except (GuardqError, httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            return self._failure(exc)
        except httpcore.UnsupportedProtocol as exc:
            return SendResult(None, error=f"unsupported URL: {exc}", permanent=True)

    def _post(self, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> SendResult:
        timeouts = {"connect": self._connect_timeout_s, "read": self._timeout_s, "write": self._timeout_s, "pool": 5.0}
        with self._pool.stream(
            "POST", url, headers=headers, content=body, extensions={"timeout": timeouts}
        ) as response:
            read = 0
            for chunk in response.iter_stream():  # drain (bounded) so the connection can be reused
                read += len(chunk)
                if read > MAX_RESPONSE_BYTES:
                    break
            header_map = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
            return SendResult(response.status, retry_after=retry_after_s(header_map.get("retry-after")))

    def _failure(self, exc: Exception) -> SendResult:
        if isinstance(exc, PermanentError):  # refused by the SSRF guard, or a host that does not resolve
            return SendResult(None, error=exc.message, permanent=exc.code is ErrorCode.FORBIDDEN_TARGET)
        if isinstance(exc, GuardqError):
            return SendResult(None, error=exc.message)
        if isinstance(exc, httpcore.TimeoutException):
            return SendResult(None, error=f"no answer within {self._timeout_s:g}s")
        return SendResult(None, error=f"{type(exc).__name__}: {exc}"[:300])
