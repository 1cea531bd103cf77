"""Request limits the web stack does not give us: body size caps and read timeouts against slow clients.

uvicorn (h11) has no timeout on a request that is still arriving: ``timeout_keep_alive`` only runs between
requests, and any byte cancels it. A client that trickles its head or body one byte at a time ("slow loris") holds
a connection — and for a body, a request handler — for as long as it likes. Two guards:

- :class:`RequestLimits`, ASGI middleware: a body may pause at most ``GUARDQ_API_READ_TIMEOUT_S`` between chunks and
  must arrive whole within ``GUARDQ_API_BODY_TIMEOUT_S`` (408 ``request_timeout``); a body other than an upload may
  be at most ``GUARDQ_API_MAX_BODY_BYTES`` (413 ``payload_too_large`` — at once from ``Content-Length``, else while
  reading: FastAPI would otherwise buffer any JSON body whole in memory). Uploads keep their own, larger cap
  (``GUARDQ_API_MAX_UPLOAD_BYTES``, enforced while streaming in ``producers.api.uploads``). The middleware answers
  itself, then tells the app the client left (``http.disconnect``) and drops whatever the app still sends.
- :func:`timed_h11`, the uvicorn protocol ``guardq api`` serves with: a client must complete its request head
  within ``GUARDQ_API_READ_TIMEOUT_S`` of connecting (or of the previous response), else the connection is closed.

Behind a proxy that already enforces such timeouts (nginx ``client_header_timeout``/``client_body_timeout``, an ALB)
these are a second line.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

from producers.api.errors import error_body

log = structlog.get_logger("guardq.api")
STREAMED_PATHS = ("/v1/uploads",)  # bodies capped by their own route while streaming


class _LimitHit(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RequestLimits:
    """ASGI middleware: body size cap (except streamed uploads) and body read timeouts."""

    def __init__(self, app: Any, *, max_body_bytes: int, read_timeout_s: float, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = None if scope["path"].startswith(STREAMED_PATHS) else self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if cap is not None and declared.isdigit() and int(declared) > cap:
            await _answer(send, _LimitHit(413, "payload_too_large", f"request bodies are limited to {cap} bytes"))
            return
        deadline = time.monotonic() + self.body_timeout_s
        state = {"received": 0, "responded": False, "cut": False, "body_done": False}

        async def limited_receive() -> dict[str, Any]:
            if state["cut"]:
                return {"type": "http.disconnect"}
            if state["body_done"] or state["responded"]:
                return dict(await receive())  # waiting for a disconnect, not for a body: no deadline
            wait = min(self.read_timeout_s, deadline - time.monotonic())
            try:
                message: dict[str, Any] = await asyncio.wait_for(receive(), timeout=max(wait, 0.001))
                if message["type"] == "http.request":
                    state["received"] += len(message.get("body", b""))
                    state["body_done"] = not message.get("more_body", False)
                    if cap is not None and state["received"] > cap:
                        raise _LimitHit(413, "payload_too_large", f"request bodies are limited to {cap} bytes")
            except TimeoutError:
                hit = _LimitHit(408, "request_timeout", "the request body arrived too slowly")
            except _LimitHit as exc:
                hit = exc
            else:
                return message
            log.warning("request_cut_off", path=scope["path"], status=hit.status, received=state["received"])
            state["cut"] = True
            if not state["responded"]:
                state["responded"] = True
                await _answer(send, hit)
            return {"type": "http.disconnect"}

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["cut"]:
                return  # we already answered for the app
            if message["type"] == "http.response.start":
                state["responded"] = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _answer(send: Any, hit: _LimitHit) -> None:
    body = json.dumps(error_body(hit.code, hit.message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": hit.status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _TimedH11(H11Protocol):
    head_timeout_s = 30.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE and self._head_timer is not None:
            self._head_timer.cancel()  # the head is complete; the body is RequestLimits' business
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.warning("request_head_timeout", client=str(self.client), timeout_s=self.head_timeout_s)
            self.transport.close()


def timed_h11(head_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head is not complete within ``head_timeout_s``."""
    return type("TimedH11Protocol", (_TimedH11,), {"head_timeout_s": head_timeout_s})
