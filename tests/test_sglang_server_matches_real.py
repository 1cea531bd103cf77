"""The SGLang-protocol test server answers in the shapes a real SGLang 0.5.17 did (``tests/fixtures/sglang-0.5.17``).

A test double that agrees with our client proves nothing; one that agrees with the recorded real server does.
Whenever a GPU run shows something new, its response goes into the fixtures and a check goes here.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.models import get_model
from schemas.policy import Policy
from schemas.settings import Settings
from schemas.taxonomy import PromptVersion
from tests import images
from tests.sglang_server import SimulatedSGLang
from tests.sglang_server.protocol import MASKED
from worker.image import prepare_image
from worker.inference.base import InferenceRequest
from worker.inference.scores import response_candidates
from worker.inference.sglang import SGLangBackend

REAL = Path(__file__).resolve().parent / "fixtures" / "sglang-0.5.17"


def real(name: str) -> Any:
    return json.loads((REAL / name).read_text())


def body(sim: SimulatedSGLang, *, with_rationale: bool) -> dict[str, Any]:
    backend = SGLangBackend(Settings(sglang_url=sim.url), get_model("AIML-TUDA/LlavaGuard-7B"))
    prepared = prepare_image(images.solid((220, 30, 30)), max_side=336, max_pixels=10**8)
    text = Policy().text(PromptVersion.V1_0)
    out = backend.build_body(InferenceRequest(prepared, text, "fid.1", with_rationale=with_rationale, want_score=True))
    backend.close()
    return out


def post(sim: SimulatedSGLang, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{sim.url}/v1/chat/completions", json=payload, timeout=10)


@pytest.mark.parametrize(
    ("fixture", "with_rationale"), [("chat_verdict_only.json", False), ("chat_rationale.json", True)]
)
def test_a_completion_has_the_real_servers_fields_and_logprob_layout(
    sim: SimulatedSGLang, fixture: str, with_rationale: bool
) -> None:
    ours = post(sim, body(sim, with_rationale=with_rationale)).json()
    theirs = real(fixture)
    assert set(theirs) == set(ours)
    assert set(theirs["choices"][0]) == set(ours["choices"][0])
    assert set(theirs["usage"]) <= set(ours["usage"]) | {"prompt_tokens_details"}
    for response in (ours, theirs):
        content = response["choices"][0]["logprobs"]["content"]
        # up to what was asked: masked candidates pad forced positions; the real server merges candidates whose
        # text is the same ("\ufffd" for split bytes), so a free position may list one or two fewer
        assert all(18 <= len(t["top_logprobs"]) <= 20 for t in content)
        assert {"token", "logprob", "bytes", "top_logprobs"} <= set(content[0])
        assert any(c["logprob"] == MASKED for t in content for c in t["top_logprobs"])
        text = response["choices"][0]["message"]["content"]
        assert text.startswith('{"rating": "')  # xgrammar's compact layout
        pieces = {c["token"] for c in response_candidates(response) or [] if c["logprob"] > -1e30}
        assert pieces <= {"S", "Safe", "Sa", "Saf", "U", "Un", "Uns", "Unsafe"} and len(pieces) >= 3


def test_logprobs_are_tempered_unless_the_server_runs_with_original_logprobs(sim: SimulatedSGLang) -> None:
    def rating_gap(temperature: float) -> float:
        payload = body(sim, with_rationale=False) | {"temperature": temperature}
        candidates = response_candidates(post(sim, payload).json()) or []
        values = sorted((c["logprob"] for c in candidates if c["logprob"] > -1e30), reverse=True)
        return values[0] - values[1]

    assert pytest.approx(5.0, rel=0.01) == rating_gap(0.2) / rating_gap(1.0)  # like the real 5.65 vs 1.19
    sim.configure(original_logprob=True)
    assert pytest.approx(1.0, rel=0.01) == rating_gap(0.2) / rating_gap(1.0)


def test_a_rid_already_in_flight_gets_the_real_servers_400(sim: SimulatedSGLang) -> None:
    sim.configure(latency_s=0.3)
    payload = body(sim, with_rationale=False) | {"rid": "dup-rid-1"}
    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(lambda _: post(sim, payload), range(2)), key=lambda r: r.status_code)
    expected = real("contract-tiny.json")["duplicate_rid_concurrent"][1]["body"]
    assert [200, 400] == [a.status_code for a in answers]
    assert "Duplicate request ID detected: dup-rid-1" in expected
    assert "Duplicate request ID detected: dup-rid-1" == answers[1].json()["message"]


def test_image_preprocessing_past_request_timeout_is_a_500_and_invisible_to_the_loads(sim: SimulatedSGLang) -> None:
    """0.5.17's llava processor awaits each image's CPU preprocessing for REQUEST_TIMEOUT seconds, queue wait
    included, then answers 500 "Internal server error: " (H200, OneVision native: 481 of 1,740 requests)."""
    sim.configure(preprocess_s=0.4, preprocess_workers=1, request_timeout_s=0.6)
    payload = body(sim, with_rationale=False)
    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(post, sim, payload | {"rid": f"pre-{i}"}) for i in range(3)]
        loads = httpx.get(f"{sim.url}/v1/loads", timeout=5).json()["loads"][0]
        replies = sorted((a.result() for a in answers), key=lambda r: r.status_code)
    assert (0, 0) == (loads["num_running_reqs"], loads["num_waiting_reqs"])  # all three still preprocessing
    assert [200, 500, 500] == [r.status_code for r in replies]  # 0.4 s in time; 0.8 s and 1.2 s past 0.6 s
    real_body = {"object": "error", "message": "Internal server error: ", "type": "InternalServerError", "code": 500}
    assert real_body.items() <= replies[1].json().items()


def test_the_endpoints_answer_like_0_5_17(sim: SimulatedSGLang) -> None:
    statuses = {path: v["status"] for path, v in real("endpoints.json").items()}
    for path, status in statuses.items():
        if path.startswith("GET "):
            assert status == httpx.get(f"{sim.url}{path[4:]}", timeout=5).status_code, path
    assert set(real("model_info.json")) - {"embedding"} <= set(httpx.get(f"{sim.url}/model_info").json())
    ours = httpx.get(f"{sim.url}/v1/loads").json()
    theirs = real("v1_loads.json")
    assert set(theirs) <= set(ours)
    core = {k for k, v in theirs["loads"][0].items() if not isinstance(v, dict | list)}
    assert core - {"total_prefill_uncached_tokens", "total_prefill_busy_us"} <= set(ours["loads"][0])
    metrics = httpx.get(f"{sim.url}/metrics").text
    assert 'sglang:num_queue_reqs{engine_type="unified",model_name=' in metrics


def test_a_budget_cut_ends_like_the_real_one(sim: SimulatedSGLang) -> None:
    """maxLength 4000 and few tokens: finish_reason length, the string left open after rating and category."""
    sim.configure(rationale_chars=4000)
    payload = body(sim, with_rationale=True)
    payload["response_format"]["json_schema"]["schema"]["properties"]["rationale"]["maxLength"] = 4000
    payload["max_tokens"] = 60
    ours = post(sim, payload).json()
    theirs = real("contract-tiny.json")["guardq_body_exact"]
    assert theirs["finish_reason"] == ours["choices"][0]["finish_reason"] == "length"
    assert "Unterminated string" in theirs["parse_error"]
    with pytest.raises(json.JSONDecodeError, match="Unterminated string"):
        json.loads(ours["choices"][0]["message"]["content"])


def read_response(conn: Any) -> bytes:
    """One whole HTTP/1.1 response (headers and a Content-Length body), however the bytes arrive."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def test_an_idle_keep_alive_connection_is_closed_like_uvicorns_but_a_slow_request_is_not(sim: SimulatedSGLang) -> None:
    """SGLang's uvicorn closes a connection idle for 5 s between requests (a reused one then fails "connection
    reset": seen on the real server); a request waiting for a running slot is not idle."""
    import socket

    assert 5.0 == sim.behaviour.keepalive_s
    sim.configure(keepalive_s=0.3, latency_s=0.6)  # serving takes longer than the idle limit
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", int(sim.url.rsplit(":", 1)[1])), timeout=5) as conn:
        small = {k: v for k, v in body(sim, with_rationale=False).items() if k not in {"logprobs", "top_logprobs"}}
        payload = json.dumps(small).encode()
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        assert read_response(conn).startswith(b"HTTP/1.1 200")  # answered after 0.6 s; the idle limit is 0.3 s
        conn.sendall(request)
        assert read_response(conn).startswith(b"HTTP/1.1 200")  # kept alive
        import time

        time.sleep(0.6)  # idle past the limit
        conn.sendall(request)
        assert b"" == conn.recv(65536)  # the server closed it


@pytest.mark.parametrize(("scheduling", "order"), [(False, ["low", "high"]), (True, ["high", "low"])])
def test_a_waiting_request_of_higher_priority_is_admitted_first_under_priority_scheduling(
    sim: SimulatedSGLang, scheduling: bool, order: list[str]
) -> None:
    """0.5.17 sorts its waiting queue by priority (higher first), then arrival, with --enable-priority-scheduling;
    without it the queue is first come first served and a request's priority is ignored."""
    import threading
    import time

    sim.configure(max_running=1, latency_s=0.3, priority_scheduling=scheduling, default_priority=0)
    done: list[str] = []

    def send(name: str, priority: int, rid: str) -> None:
        assert 200 == post(sim, body(sim, with_rationale=False) | {"rid": rid, "priority": priority}).status_code
        done.append(name)

    threads = [
        threading.Thread(target=send, args=("busy", 0, "p.busy")),
        threading.Thread(target=send, args=("low", 0, "p.low")),
        threading.Thread(target=send, args=("high", 1, "p.high")),
    ]
    for thread in threads:  # in this order, each queued before the next is sent
        thread.start()
        time.sleep(0.08)
    for thread in threads:
        thread.join(10)
    assert ["busy", *order] == done
