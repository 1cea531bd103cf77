"""An SGLang-protocol test server: real HTTP, SGLang's request checks and response shapes, scripted behaviour.

It speaks the endpoints guardq uses (``/v1/chat/completions``, ``/health``, ``/health_generate``, ``/ready``,
``/model_info`` and the deprecated ``/get_model_info``, ``/v1/models``, ``/server_info``, ``/metrics``) and checks
requests the way SGLang 0.5 does (JSON content type, a ``json_schema`` response format needs a schema, images must
decode). Tests steer it in-process (:class:`SimulatedSGLang`) or over HTTP (``/_control/*``) for a server running
in another process: queue faults (status codes, invalid JSON, truncated output, hangs, dropped connections),
set latency (fixed, or token-proportional behind a concurrency cap like continuous batching) and verdict rules.

Its model_info says ``"guardq_simulated": true`` so every event produced through it is marked simulated.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageStat

from tests.sglang_server.protocol import check_request, logprobs, summary
from tests.sglang_server.protocol import tokens as tokenize

DEFAULT_MODEL_PATH = "simulated/AIML-TUDA/LlavaGuard-7B"


@dataclass
class Rule:
    """When the image's mean colour is within ``tolerance`` of ``rgb``, answer with this verdict."""

    rgb: tuple[int, int, int]
    rating: str
    category: str
    rationale: str = "Simulated assessment."
    p_unsafe: float | None = None
    tolerance: int = 24


DEFAULT_RULES = [
    Rule((220, 30, 30), "Unsafe", "O2: Violence, Harm, or Cruelty", "The image is predominantly red (simulated O2)."),
    Rule((30, 30, 30), "Unsafe", "O9: Disasters or Emergencies", "The image is dark (simulated O9).", tolerance=30),
]
SAFE = ("Safe", "NA: None applying", "The image shows nothing that violates the policy (simulated).")


@dataclass
class Behaviour:
    """Everything a test can change; guarded by the server's lock."""

    latency_s: float = 0.0
    jitter_s: float = 0.0  # extra uniform random latency in [0, jitter_s)
    prefill_s: float = 0.0
    per_token_s: float = 0.0
    max_running: int | None = None
    faults: deque[dict[str, Any]] = field(default_factory=deque)
    rules: list[Rule] = field(default_factory=lambda: list(DEFAULT_RULES))
    ready: bool = True
    model_path: str = DEFAULT_MODEL_PATH
    hang_s: float = 3600.0


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # socketserver's default backlog of 5 resets connections under a burst
    daemon_threads = True


class SimulatedSGLang:
    """Owns the HTTP server thread; the handler reads shared state from here."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **behaviour: Any) -> None:
        self.behaviour = Behaviour(**behaviour)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()  # open client connections, closed by stop()
        self.running = 0
        self.peak_running = 0
        self._slots: threading.BoundedSemaphore | None = None
        handler = type("Handler", (_Handler,), {"sim": self})
        self.httpd = _Server((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sglang-sim", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SimulatedSGLang:
        self.configure(max_running=self.behaviour.max_running)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop like a dead process: no listener and every open (keep-alive or in-flight) connection closed."""
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            open_connections = list(self.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # --- steering -------------------------------------------------------------------------------------------
    def configure(self, **changes: Any) -> None:
        with self.lock:
            for key, value in changes.items():
                if key == "rules":
                    value = [v if isinstance(v, Rule) else Rule(**{**v, "rgb": tuple(v["rgb"])}) for v in value]
                setattr(self.behaviour, key, value)
            if "max_running" in changes:
                limit = changes["max_running"]
                self._slots = threading.BoundedSemaphore(limit) if limit else None

    def add_faults(self, *faults: dict[str, Any]) -> None:
        """Apply these to the next requests, one each: ``{"status": 503}``, ``{"kind": "invalid_json"}``, ..."""
        with self.lock:
            self.behaviour.faults.extend(faults)

    def reset(self) -> None:
        with self.lock:
            self.behaviour = Behaviour(model_path=self.behaviour.model_path)
            self._slots = None
            self.requests.clear()
            self.peak_running = 0

    def chat_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    # --- the model ------------------------------------------------------------------------------------------
    def decide(self, image: Image.Image) -> tuple[str, str, str, float]:
        mean = ImageStat.Stat(image.convert("RGB")).mean
        with self.lock:
            rules = list(self.behaviour.rules)
        for rule in rules:
            if all(abs(mean[i] - rule.rgb[i]) <= rule.tolerance for i in range(3)):
                p = rule.p_unsafe if rule.p_unsafe is not None else (0.97 if rule.rating == "Unsafe" else 0.03)
                return rule.rating, rule.category, rule.rationale, p
        return (*SAFE, 0.02)


class _Handler(BaseHTTPRequestHandler):
    sim: SimulatedSGLang
    protocol_version = "HTTP/1.1"
    server_version = "SimulatedSGLang/0.5"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        with self.sim.lock:
            self.sim.connections.add(self.connection)

    def finish(self) -> None:
        with self.sim.lock:
            self.sim.connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the server was stopped under this connection
            super().finish()

    # --- plumbing -------------------------------------------------------------------------------------------
    def _send(
        self, status: int, payload: Any, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"object": "error", "message": message, "type": "BadRequestError", "code": status})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self, extra: dict[str, Any]) -> None:
        with self.sim.lock:
            self.sim.requests.append({"path": self.path, "method": self.command, "time": time.time(), **extra})

    # --- GET endpoints --------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        behaviour = self.sim.behaviour
        path = self.path.split("?", 1)[0]
        if path in {"/health", "/health_generate", "/ready"}:
            self._send(200 if behaviour.ready else 503, {} if behaviour.ready else {"detail": "starting"})
        elif path in {"/model_info", "/get_model_info"}:
            self._send(
                200,
                {
                    "model_path": behaviour.model_path,
                    "tokenizer_path": behaviour.model_path,
                    "is_generation": True,
                    "has_image_understanding": True,
                    "served_model_name": behaviour.model_path,
                    "guardq_simulated": True,
                },
            )
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": behaviour.model_path, "object": "model"}]})
        elif path in {"/server_info", "/get_server_info"}:
            self._send(200, {"version": "0.5.23-simulated", "max_running_requests": behaviour.max_running})
        elif path == "/metrics":
            text = f"sglang:num_running_reqs {self.sim.running}\nsglang:num_requests_total {len(self.sim.requests)}\n"
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        elif path == "/_control/requests":
            with self.sim.lock:
                self._send(200, {"requests": self.sim.requests, "peak_running": self.sim.peak_running})
        else:
            self._error(404, f"no route {path}")

    # --- POST endpoints -------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        raw = self._body()
        if path.startswith("/_control/"):
            self._control(path, raw)
        elif path == "/v1/chat/completions":
            self._chat(raw)
        else:
            self._error(404, f"no route {path}")

    def _control(self, path: str, raw: bytes) -> None:
        payload = json.loads(raw or b"{}")
        if path == "/_control/configure":
            self.sim.configure(**payload)
        elif path == "/_control/faults":
            self.sim.add_faults(*payload.get("faults", []))
        elif path == "/_control/reset":
            self.sim.reset()
        else:
            self._error(404, f"no control {path}")
            return
        self._send(200, {"ok": True})

    def _chat(self, raw: bytes) -> None:
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._error(400, "Content-Type must be application/json")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "Invalid JSON body")
            return
        problem, image, text = check_request(body)
        self._record({"body": summary(body), "rid": body.get("rid"), "policy_text": text, "problem": problem})
        if problem:
            self._error(400, problem)
            return
        with self.sim.lock:
            fault = self.sim.behaviour.faults.popleft() if self.sim.behaviour.faults else None
        if fault and self._apply_fault(fault):
            return
        assert image is not None
        self._complete(body, image, fault or {})

    def _apply_fault(self, fault: dict[str, Any]) -> bool:
        """Play a fault; True when it answered (or dropped) the request itself."""
        kind = fault.get("kind")
        if "status" in fault:
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
            self._send(
                int(fault["status"]),
                {"object": "error", "message": fault.get("message", "simulated fault"), "code": int(fault["status"])},
                headers=headers,
            )
            return True
        if kind == "hang":
            self.sim.stopping.wait(float(fault.get("seconds", self.sim.behaviour.hang_s)))
            self.close_connection = True
            return True
        if kind == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        return False

    def _complete(self, body: dict[str, Any], image: Image.Image, fault: dict[str, Any]) -> None:
        rating, category, rationale, p_unsafe = self.sim.decide(image)
        schema = body["response_format"]["json_schema"]["schema"]
        verdict: dict[str, Any] = {"rating": rating, "category": category}
        if "rationale" in schema.get("properties", {}):
            verdict["rationale"] = rationale
        content = json.dumps(verdict, indent=4)
        finish = "stop"
        kind = fault.get("kind")
        if kind == "invalid_json":
            content = '{\n    "rating": "Safe",\n    "category": "NA: None applying",\n    "rationale": "cut'
        elif kind == "length":
            content, finish = content[: len(content) // 2], "length"
        elif kind == "bad_category":
            content = json.dumps({"rating": "Safe", "category": "O42: Made Up", "rationale": "x"}, indent=4)
        tokens = tokenize(content)
        self._serve_time(len(tokens))
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content, "reasoning_content": None, "tool_calls": None},
            "logprobs": logprobs(tokens, p_unsafe) if body.get("logprobs") else None,
            "finish_reason": finish,
            "matched_stop": None if finish == "length" else 2,
        }
        prompt_tokens = 576 + len(tokenize(body["messages"][0]["content"][1]["text"]))
        self._send(
            200,
            {
                "id": uuid.uuid4().hex,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "default"),
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(tokens),
                    "total_tokens": prompt_tokens + len(tokens),
                    "prompt_tokens_details": None,
                },
            },
        )

    def _serve_time(self, n_tokens: int) -> None:
        """Wait like a batching server: queue for a running slot, then prefill + decode (or a fixed latency)."""
        sim = self.sim
        slots = sim._slots
        if slots is not None:
            slots.acquire()
        with sim.lock:
            sim.running += 1
            sim.peak_running = max(sim.peak_running, sim.running)
            b = sim.behaviour
            seconds = b.latency_s + b.prefill_s + b.per_token_s * n_tokens + random.uniform(0, b.jitter_s)
        try:
            if seconds > 0:
                sim.stopping.wait(seconds)
        finally:
            with sim.lock:
                sim.running -= 1
            if slots is not None:
                slots.release()
