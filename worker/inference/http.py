"""A lean keep-alive HTTP/1.1 client for inference servers (httpcore directly, no cookies/redirect layers).

The worker sends tens of requests per second per process; httpx's conveniences (cookie jar, redirect and auth
handling, URL re-parsing) cost more CPU per call than the call itself, so the hot path uses httpcore.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from typing import Any

import httpcore
import orjson

# SGLang's uvicorn closes a keep-alive connection after 5 s idle (SGLANG_TIMEOUT_KEEP_ALIVE); a pooled connection
# reused just as the server closes it fails with "connection reset" (seen on the real server: a job retry for
# nothing). Dropping idle connections well before that never reuses one the server is about to close.
KEEPALIVE_EXPIRY_S = 3.0

# httpcore's pool walks all its connections, and for each idle one all of them again, on every request and every
# response, under one lock: with 600 jobs in flight (P1 at C = 512) the worker spent 17 ms of CPU per job instead of
# 6 and starved the server after each wave. Threads are spread over pools of at most this many connections each.
SHARD_CONNECTIONS = 32


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
        # Each pool may open max_connections (an uneven spread never blocks a thread); what the sharding bounds is
        # how many connections each pool's bookkeeping walks.
        self._pools = [
            httpcore.ConnectionPool(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
                retries=0,
            )
            for _ in range(max(1, math.ceil(max_connections / SHARD_CONNECTIONS)))
        ]
        self._next = itertools.count()
        self._local = threading.local()

    def _pool(self) -> httpcore.ConnectionPool:
        """This thread's pool: threads are dealt round-robin on first use and keep theirs (its kept-alive
        connections stay theirs too; Celery's pool threads live as long as the worker)."""
        pool: httpcore.ConnectionPool | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = self._pools[next(self._next) % len(self._pools)]
        return pool

    def _timeouts(self, timeout_s: float | None) -> dict[str, float]:
        total = timeout_s if timeout_s is not None else self._timeout_s
        return {"connect": min(self._connect_timeout_s, total), "read": total, "write": total, "pool": total}

    def request(self, method: str, path: str, *, body: bytes | None = None, timeout_s: float | None = None) -> Reply:
        headers = list(self._headers)
        if body is not None:
            headers += [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        response = self._pool().request(
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
        for pool in self._pools:
            pool.close()


TRANSPORT_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)
