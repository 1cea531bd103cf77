"""A real HTTP webhook receiver on loopback (127.0.0.2) that verifies every request with the ``standardwebhooks``
reference library from PyPI, never with guardq's own code.

Each path has its own secret and a scripted list of answers (status, optional Retry-After, or ``"hang"`` to never
answer); after the script runs out it answers 200. A request counts as *accepted* when its signature verified and
the receiver answered 2xx; receivers dedupe on ``webhook-id`` as the spec tells them to.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HOST = "127.0.0.2"


@dataclass
class Received:
    path: str
    webhook_id: str
    body: bytes
    verified: bool
    status: int | str
    at: float
    error: str | None = None


@dataclass
class _Route:
    secret: str | None = None
    script: list[Any] = field(default_factory=list)


class Receiver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.routes: dict[str, _Route] = {}
        self.received: list[Received] = []
        self.stopping = threading.Event()
        handler = type("Handler", (_Handler,), {"receiver": self})
        self.httpd = ThreadingHTTPServer((HOST, 0), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}{path}"

    def route(self, path: str, *, secret: str | None = None, script: list[Any] | None = None) -> None:
        """Set the secret that signs ``path``'s requests and the answers it gives first (then 200 forever)."""
        with self.lock:
            route = self.routes.setdefault(path, _Route())
            if secret is not None:
                route.secret = secret
            if script is not None:
                route.script = list(script)

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def accepted(self, path: str) -> list[Received]:
        return [r for r in self.requests(path) if r.verified and isinstance(r.status, int) and 200 <= r.status < 300]


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        rec = self.receiver
        with rec.lock:
            route = rec.routes.setdefault(self.path, _Route())
            answer = route.script.pop(0) if route.script else 200
            secret = route.secret
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified, error = False, None
        if secret is None:
            error = "no secret configured for this path"
        else:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
            except WebhookVerificationError as exc:
                error = str(exc)
        entry = Received(
            self.path,
            headers.get("webhook-id", ""),
            body,
            verified,
            answer if answer != "hang" else "hang",
            time.time(),
            error,
        )
        with rec.lock:
            rec.received.append(entry)
        if answer == "hang":
            rec.stopping.wait(30)  # never answers (until the receiver stops)
            return
        status, extra = (answer, {}) if isinstance(answer, int) else (answer[0], answer[1])
        if not verified and 200 <= status < 300:
            status = 400
            entry.status = 400
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
