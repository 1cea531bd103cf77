"""An SGLang-protocol test server: real HTTP, SGLang 0.5.17's request checks and response shapes, scripted verdicts.

It speaks the endpoints guardq uses as a real 0.5.17 server does (``/v1/chat/completions``; ``/health`` and
``/health_generate``, 503 while starting; no ``/ready``, which 0.5.17 lacks; ``/model_info`` and the deprecated
``/get_model_info``; ``/server_info``, ``/get_server_info``, ``/v1/loads``, ``/v1/models``, ``/metrics``) and
behaves like one where guardq depends on it (``tests/sglang_server/protocol.py`` lists what was measured):
tempered logprobs with masked candidates, sub-word rating pieces, raw control characters, ``maxLength`` and
``max_tokens`` truncation, 400 for a ``rid`` already in flight, and a running-request cap with a waiting queue
reported in ``/metrics`` (``num_running_reqs``, ``num_queue_reqs``, ``token_usage``) and ``/v1/loads``.

Tests steer it in-process (:class:`SimulatedSGLang`) or over HTTP (``/_control/*``) for a server running in
another process: queue faults (status codes, invalid JSON, truncated output, hangs, dropped connections), set
latency (fixed, or prefill + per-token behind the running cap) and verdict rules. Product defaults never point at
it; its model_info says ``"guardq_simulated": true`` so every event produced through it is marked simulated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from tests.sglang_server import observability
from tests.sglang_server.admission import AdmissionGate, queue_priority
from tests.sglang_server.completion import Decision, RadixStandIn, Style, build, prompt_tokens
from tests.sglang_server.preprocess import TIMEOUT_ERROR, PreprocessPool
from tests.sglang_server.protocol import check_request, summary
from tests.sglang_server.rules import DEFAULT_RULES, SAFE, Rule, decide

DEFAULT_MODEL_PATH = "simulated/AIML-TUDA/LlavaGuard-7B"
__all__ = ["DEFAULT_MODEL_PATH", "DEFAULT_RULES", "SAFE", "Behaviour", "Rule", "SimulatedSGLang"]


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
    original_logprob: bool = False  # the server process ran with SGLANG_RETURN_ORIGINAL_LOGPROB=1
    layout: str = "compact"  # "compact" as xgrammar wrote it on the real server, "indent4" as LlavaGuard trained
    rationale_chars: int | None = None  # a rambling (random-weight) model: rationales this long, cut by maxLength
    control_chars: bool = False  # raw control characters in rambling rationales, as xgrammar let through
    health_s: float = 0.0  # a real /health waits at least 1 s for the scheduler; tests keep it instant by default
    cache_report: bool = False  # --enable-cache-report: usage.prompt_tokens_details.cached_tokens in responses
    keepalive_s: float = 5.0  # uvicorn's keep-alive timeout in SGLang
    max_total_tokens: int = 215_000  # the KV pool (what token_usage is a fraction of); ~ the H200's at 0.85
    # --enable-priority-scheduling: waiting requests are admitted by "priority" (higher first), then arrival;
    # without a priority a request gets --default-priority-value, else the lowest priority (as 0.5.17 does)
    priority_scheduling: bool = False
    default_priority: int | None = None
    # the image preprocessing before the scheduler (preprocess.py): s per image (0: none), processes, timeout
    preprocess_s: float = 0.0
    preprocess_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    request_timeout_s: float = 10.0


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
        self.tokens_in_use = 0
        self.in_flight_rids: set[str] = set()
        self.radix = RadixStandIn()  # prompt prefixes seen (image + policy) and their tokens
        self.gate = AdmissionGate()
        self.preprocess = PreprocessPool()
        handler = type("Handler", (_Handler,), {"sim": self})
        self.httpd = _Server((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sglang-sim", daemon=True)

    @property
    def waiting(self) -> int:
        """Requests queued for a running slot (``num_queue_reqs``)."""
        return self.gate.waiting

    @property
    def peak_waiting(self) -> int:
        return self.gate.peak_waiting

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
                self.gate.set_limit(changes["max_running"] or None)

    def add_faults(self, *faults: dict[str, Any]) -> None:
        """Apply these to the next requests, one each: ``{"status": 503}``, ``{"kind": "invalid_json"}``, ..."""
        with self.lock:
            self.behaviour.faults.extend(faults)

    def reset(self) -> None:
        with self.lock:
            self.behaviour = Behaviour(model_path=self.behaviour.model_path)
            self.gate.set_limit(None)
            self.radix = RadixStandIn()
            self.preprocess = PreprocessPool()
            self.requests.clear()
            self.peak_running = 0
            self.gate.reset_peak()

    def _chats(self, *, moderation: bool) -> list[dict[str, Any]]:
        with self.lock:
            chats = [r for r in self.requests if r["path"] == "/v1/chat/completions"]
        return [r for r in chats if (r.get("body", {}).get("response_format") is not None) is moderation]

    def chat_requests(self) -> list[dict[str, Any]]:
        """Moderation requests (those with a response format), in arrival order."""
        return self._chats(moderation=True)

    def probe_requests(self) -> list[dict[str, Any]]:
        """Requests without a response format: the worker's logprob probes (worker.inference.tempering)."""
        return self._chats(moderation=False)

    # --- the model ------------------------------------------------------------------------------------------
    def decide(self, image: Image.Image) -> tuple[str, str, str, float]:
        with self.lock:
            rules = list(self.behaviour.rules)
        return decide(rules, image)


class _Handler(BaseHTTPRequestHandler):
    sim: SimulatedSGLang
    protocol_version = "HTTP/1.1"
    server_version = "SimulatedSGLang/0.5"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        self._served = 0
        with self.sim.lock:
            self.sim.connections.add(self.connection)

    def handle_one_request(self) -> None:
        """Like SGLang's uvicorn (``SGLANG_TIMEOUT_KEEP_ALIVE``): a kept-alive connection that sends no new request
        within ``keepalive_s`` (5 s) is closed; a request being read or served has no such limit."""
        self.connection.settimeout(self.sim.behaviour.keepalive_s if self._served else None)
        super().handle_one_request()
        self._served += 1

    def parse_request(self) -> bool:
        self.connection.settimeout(None)  # the request line arrived: the idle limit is over
        return bool(super().parse_request())

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
        sim = self.sim
        behaviour = sim.behaviour
        path = self.path.split("?", 1)[0]
        if path in {"/health", "/health_generate"}:
            if behaviour.health_s:
                sim.stopping.wait(behaviour.health_s)
            self._send(200 if behaviour.ready else 503, b"", "text/plain")
        elif path in {"/model_info", "/get_model_info"}:
            self._send(200, observability.model_info(behaviour.model_path))
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": behaviour.model_path, "object": "model"}]})
        elif path in {"/server_info", "/get_server_info"}:
            self._send(200, observability.server_info(sim))
        elif path == "/v1/loads":
            self._send(200, observability.loads(sim))
        elif path == "/metrics":
            self._send(200, observability.metrics(sim).encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/_control/requests":
            with sim.lock:
                self._send(
                    200,
                    {"requests": sim.requests, "peak_running": sim.peak_running, "peak_waiting": sim.peak_waiting},
                )
        else:
            self._send(404, {"detail": "Not Found"})  # FastAPI's answer (0.5.17 has no /ready, for one)

    # --- POST endpoints -------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        raw = self._body()
        if path.startswith("/_control/"):
            self._control(path, raw)
        elif path == "/v1/chat/completions":
            self._chat(raw)
        else:
            self._send(404, {"detail": "Not Found"})

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
        rid = body.get("rid") if isinstance(body, dict) else None
        self._record({"body": summary(body), "rid": rid, "policy_text": text, "problem": problem})
        if problem:
            self._error(400, problem)
            return
        with self.sim.lock:
            duplicate = rid is not None and rid in self.sim.in_flight_rids
            if rid is not None and not duplicate:
                self.sim.in_flight_rids.add(rid)
            # queued faults are for moderation requests (with a response format), not the worker's logprob probes
            moderation = isinstance(body, dict) and body.get("response_format") is not None
            fault = (
                self.sim.behaviour.faults.popleft()
                if self.sim.behaviour.faults and moderation and not duplicate
                else None
            )
        if duplicate:
            self._error(400, f"Duplicate request ID detected: {rid}")  # what 0.5.17 answers a rid already in flight
            return
        try:
            if fault and self._apply_fault(fault):
                return
            assert image is not None
            self._complete(body, image, fault or {})
        finally:
            if rid is not None:
                with self.sim.lock:
                    self.sim.in_flight_rids.discard(rid)

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
        fingerprint = hashlib.sha1(image.tobytes()).hexdigest()
        text = str(body["messages"][0]["content"][-1].get("text") or "")
        key = f"{fingerprint}:{hashlib.sha1(text.encode()).hexdigest()}"
        sim = self.sim
        with sim.lock:
            b = sim.behaviour
            priority = queue_priority(body, enabled=b.priority_scheduling, default=b.default_priority)
            stage = (b.preprocess_s, b.preprocess_workers, b.request_timeout_s)
        if stage[0] > 0 and not sim.preprocess.run(
            stage[0], workers=stage[1], timeout_s=stage[2], stopping=sim.stopping
        ):
            self._send(500, TIMEOUT_ERROR)
            return
        sim.gate.acquire(priority)  # a running slot: like the scheduler, in queue order
        try:
            n_prompt = prompt_tokens(body)
            with sim.lock:
                b = sim.behaviour
                # the radix cache is matched at admission; entries of finished prompts give way to this one
                reserved = int(body.get("max_tokens") or 0)  # SGLang reserves room for the new tokens too
                room = b.max_total_tokens - sim.tokens_in_use - n_prompt - reserved
                cached = sim.radix.admit(key, body, room=room)
                style = Style(
                    b.layout,
                    b.rationale_chars,
                    b.control_chars,
                    b.original_logprob,
                    seed=int(fingerprint[:8], 16),
                    cached_tokens=cached if b.cache_report else None,
                )
            payload, generated = build(body, Decision(rating, category, rationale, p_unsafe), style, fault)
            self._serve_time(generated, n_prompt)
            with sim.lock:
                sim.radix.finish(key, body)
        finally:
            sim.gate.release()
        self._send(200, payload)

    def _serve_time(self, n_tokens: int, n_prompt: int) -> None:
        """Hold a running slot like a batching server: prefill + decode (or a fixed latency)."""
        sim = self.sim
        with sim.lock:
            sim.running += 1
            sim.tokens_in_use += n_prompt + n_tokens
            sim.peak_running = max(sim.peak_running, sim.running)
            b = sim.behaviour
            seconds = b.latency_s + b.prefill_s + b.per_token_s * n_tokens + random.uniform(0, b.jitter_s)
        try:
            if seconds > 0:
                sim.stopping.wait(seconds)
        finally:
            with sim.lock:
                sim.running -= 1
                sim.tokens_in_use -= n_prompt + n_tokens
