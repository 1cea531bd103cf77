"""Fetch an image from an http(s) URL behind the SSRF guard, with size, time and redirect caps."""

from __future__ import annotations

import time
from urllib.parse import urljoin, urlsplit

import httpcore

from schemas.errors import ErrorCode, PermanentError, TransientError
from worker.sources.netguard import AddressPolicy, GuardedBackend

USER_AGENT = "guardq-fetcher/0.1 (+https://github.com/guardq)"
_REDIRECTS = {301, 302, 303, 307, 308}


class HttpFetcher:
    """One connection pool per worker process; every connection goes through :class:`GuardedBackend`."""

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        max_bytes: int,
        timeout_s: float,
        connect_timeout_s: float,
        max_redirects: int,
        max_connections: int = 64,
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            network_backend=GuardedBackend(policy),
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 2,
            retries=0,
        )
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_redirects = max_redirects

    def close(self) -> None:
        self._pool.close()

    def fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + self._timeout_s
        for _ in range(self._max_redirects + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in {"http", "https"}:
                raise PermanentError(f"scheme {scheme!r} is not allowed", code=ErrorCode.FORBIDDEN_SOURCE)
            location, body = self._get(url, deadline)
            if location is None:
                return body
            url = urljoin(url, location)
        raise PermanentError(f"more than {self._max_redirects} redirects", code=ErrorCode.FETCH_FAILED)

    def _timeouts(self, deadline: float) -> dict[str, float]:
        left = max(0.001, deadline - time.monotonic())
        return {"connect": min(self._connect_timeout_s, left), "read": left, "write": left, "pool": left}

    def _get(self, url: str, deadline: float) -> tuple[str | None, bytes]:
        """GET ``url``; return ``(redirect target, b"")`` or ``(None, body)``."""
        headers = [(b"User-Agent", USER_AGENT.encode()), (b"Accept", b"image/*")]
        try:
            with self._pool.stream(
                "GET", url, headers=headers, extensions={"timeout": self._timeouts(deadline)}
            ) as response:
                status = response.status
                header_map = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
                if status in _REDIRECTS:
                    if "location" not in header_map:
                        raise PermanentError(f"redirect {status} without Location", code=ErrorCode.FETCH_FAILED)
                    return header_map["location"], b""
                self._raise_for_status(status, url, header_map)
                declared = int(header_map.get("content-length", "0") or 0)
                if declared > self._max_bytes:
                    raise PermanentError(
                        f"image is {declared:,} bytes; the limit is {self._max_bytes:,}", code=ErrorCode.TOO_LARGE
                    )
                chunks: list[bytes] = []
                total = 0
                for chunk in response.iter_stream():
                    total += len(chunk)
                    if total > self._max_bytes:
                        raise PermanentError(
                            f"image exceeds the {self._max_bytes:,}-byte limit", code=ErrorCode.TOO_LARGE
                        )
                    if time.monotonic() > deadline:
                        raise TransientError(f"download of {url[:100]} timed out", code=ErrorCode.FETCH_FAILED)
                    chunks.append(chunk)
                return None, b"".join(chunks)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.RemoteProtocolError) as exc:
            raise TransientError(f"fetching {url[:100]} failed: {exc!r}", code=ErrorCode.FETCH_FAILED) from None
        except httpcore.UnsupportedProtocol as exc:
            raise PermanentError(f"unsupported URL {url[:100]}: {exc}", code=ErrorCode.INVALID_SOURCE) from None

    @staticmethod
    def _raise_for_status(status: int, url: str, headers: dict[str, str]) -> None:
        if 200 <= status < 300:
            return
        where = url[:100]
        if status in {404, 410}:
            raise PermanentError(f"{where} answered {status}", code=ErrorCode.NOT_FOUND)
        if status in {401, 403}:
            raise PermanentError(f"{where} answered {status}", code=ErrorCode.ACCESS_DENIED)
        if status == 429 or status >= 500:
            retry_after = headers.get("retry-after")
            raise TransientError(
                f"{where} answered {status}",
                code=ErrorCode.FETCH_FAILED,
                retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        raise PermanentError(f"{where} answered {status}", code=ErrorCode.FETCH_FAILED)
