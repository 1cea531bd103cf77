"""A lean keep-alive HTTP/1.1 client for inference servers (httpcore directly, no cookies/redirect layers).

The worker sends tens of requests per second per process; httpx's conveniences (cookie jar, redirect and auth
handling, URL re-parsing) cost more CPU per call than the call itself, so the hot path uses httpcore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpcore
import orjson

# SGLang's uvicorn closes a keep-alive connection after 5 s idle (SGLANG_TIMEOUT_KEEP_ALIVE); a pooled connection
# reused just as the server closes it fails with "connection reset" (seen on the real server: a job retry for
# nothing). Dropping idle connections well before that never reuses one the server is about to close.
KEEPALIVE_EXPIRY_S = 3.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)  # logprob-laden responses are tens of KB; orjson parses them ~4x faster

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class HttpClient:
    """One pool of persistent connections to one base URL; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._pool = httpcore.ConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            retries=0,
        )

    def _timeouts(self, timeout_s: float | None) -> dict[str, float]:
        total = timeout_s if timeout_s is not None else self._timeout_s
        return {"connect": min(self._connect_timeout_s, total), "read": total, "write": total, "pool": total}

    def request(self, method: str, path: str, *, body: bytes | None = None, timeout_s: float | None = None) -> Reply:
        headers = list(self._headers)
        if body is not None:
            headers += [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        response = self._pool.request(
            method,
            self.base_url + path,
            headers=headers,
            content=body,
            extensions={"timeout": self._timeouts(timeout_s)},
        )
        reply_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
        return Reply(response.status, reply_headers, response.content)

    def post_json(self, path: str, payload: Any, *, timeout_s: float | None = None) -> Reply:
        return self.request("POST", path, body=orjson.dumps(payload), timeout_s=timeout_s)

    def get(self, path: str, *, timeout_s: float | None = None) -> Reply:
        return self.request("GET", path, timeout_s=timeout_s)

    def close(self) -> None:
        self._pool.close()


TRANSPORT_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)
