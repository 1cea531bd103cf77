"""A loopback HTTP server that is *not* SGLang: healthy on ``/health`` and ``/ready``, and one fixed status for
everything else (404: a URL pointing at some other service; 401: SGLang started with ``--api-key`` and a worker
holding the wrong key). What a misconfigured ``GUARDQ_SGLANG_URL`` or ``GUARDQ_SGLANG_API_KEY`` meets."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class NotSGLang:
    def __init__(self, status: int) -> None:
        self.status = status
        self.posts = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] in {"/health", "/ready"}:
                    self._answer(200, {"status": "ok"})
                else:
                    self._answer(outer.status, {"detail": "Not Found" if outer.status == 404 else "Unauthorized"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer._lock:
                    outer.posts += 1
                self._answer(outer.status, {"detail": "Not Found" if outer.status == 404 else "Invalid API Key"})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="not-sglang", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> NotSGLang:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
