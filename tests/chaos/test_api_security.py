"""The HTTP API under hostile clients: keys, tenants, oversize bodies, slow-loris, rate limits.

The server is the real app served by uvicorn the way ``guardq api`` serves it (the head-timeout h11 protocol), with
limits small enough to hit in a test: 1 s read timeout, 3 s body deadline, 64 KiB JSON bodies, 64 KiB uploads,
40 requests per tenant and minute. Each check's outcome is recorded for docs/reliability.md.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from producers.api.app import create_app
from producers.api.auth import ApiKeyStore
from producers.api.limits import timed_h11
from schemas.settings import Settings
from tests import images
from tests.chaos.ledger import Tally, record
from tests.services.procs import free_port, wait_until

pytestmark = pytest.mark.integration
READ_TIMEOUT_S, BODY_TIMEOUT_S, CAP = 1.0, 3.0, 64 * 1024


class Api:
    """The app in a uvicorn server thread, configured like ``guardq api``."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.app = create_app(settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            http=timed_h11(settings.api_read_timeout_s),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "uvicorn")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def api(settings: Settings, redis_url: str) -> Iterator[Api]:
    limits = {
        "api_read_timeout_s": READ_TIMEOUT_S,
        "api_body_timeout_s": BODY_TIMEOUT_S,
        "api_max_body_bytes": CAP,
        "api_max_upload_bytes": CAP,
        "api_rate_limit": 40,
        "api_rate_window_s": 60,
    }
    server = Api(settings.model_copy(update=limits))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(api: Api) -> ApiKeyStore:
    return ApiKeyStore(api.app.state.services.queue.redis)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chunked(total: int, piece: int = 16 * 1024) -> Iterator[bytes]:
    """A JSON-ish body sent with chunked encoding (no Content-Length to refuse it by)."""
    yield b'{"source": "s3://guardq-test/x.jpg", "metadata": {"pad": "'
    for _ in range(total // piece):
        yield b"x" * piece
    yield b'"}}'


def refusal_cases(api: Api, keys: ApiKeyStore) -> list[tuple[str, Callable[[], httpx.Response], int, str]]:
    a, b = f"tenant-a-{uuid.uuid4().hex[:6]}", f"tenant-b-{uuid.uuid4().hex[:6]}"
    _, key_a = keys.create(a)
    key_b_id, key_b = keys.create(b)
    revoked_id, revoked = keys.create(b)
    keys.revoke(b, revoked_id)
    url = f"{api.url}/v1/moderations"
    job_a = httpx.post(url, json={"source": "s3://guardq-test/a.jpg"}, headers=bearer(key_a)).json()["job_id"]
    wrong_secret = f"gq_{key_b_id}_{'A' * 43}"
    big = {"source": "s3://guardq-test/x.jpg", "metadata": {"pad": "x" * (CAP + 1)}}
    files = {"file": ("big.jpg", images.solid() + b"\x00" * CAP, "image/jpeg")}

    def get(job_id: str, token: str) -> httpx.Response:
        return httpx.get(f"{url}/{job_id}", headers=bearer(token))

    return [
        ("no API key", lambda: httpx.post(url, json={"source": "s3://b/k.jpg"}), 401, "missing_api_key"),
        ("malformed key", lambda: httpx.post(url, json={}, headers=bearer("hunter2")), 401, "invalid_api_key"),
        ("unknown key", lambda: get(job_a, f"gq_{'0' * 12}_{'x' * 43}"), 401, "invalid_api_key"),
        ("known key id, wrong secret", lambda: get(job_a, wrong_secret), 401, "invalid_api_key"),
        (
            "Basic auth, wrong password",
            lambda: httpx.get(f"{url}/{job_a}", auth=("sns", "nope")),
            401,
            "invalid_api_key",
        ),
        ("revoked key", lambda: get(job_a, revoked), 403, "api_key_revoked"),
        ("tenant B reads tenant A's job", lambda: get(job_a, key_b), 404, "not_found"),
        ("tenant B reads a job that does not exist", lambda: get(uuid.uuid4().hex, key_b), 404, "not_found"),
        ("tenant A reads its own job", lambda: get(job_a, key_a), 200, ""),
        (
            "JSON body over the cap (Content-Length)",
            lambda: httpx.post(url, json=big, headers=bearer(key_a)),
            413,
            "payload_too_large",
        ),
        (
            "JSON body over the cap (chunked, no length)",
            lambda: httpx.post(
                url, content=chunked(CAP * 4), headers=bearer(key_a) | {"Content-Type": "application/json"}
            ),
            413,
            "payload_too_large",
        ),
        (
            "upload over the cap",
            lambda: httpx.post(f"{api.url}/v1/uploads", files=files, headers=bearer(key_a)),
            413,
            "payload_too_large",
        ),
    ]


def test_hostile_requests_are_refused_with_the_designed_status_and_code(api: Api, keys: ApiKeyStore) -> None:
    cases = refusal_cases(api, keys)
    got, want = {}, {}
    for name, call, status, code in cases:
        response = call()
        body = response.json()
        got[name] = (response.status_code, body.get("error", {}).get("code", ""))
        want[name] = (status, code)
    record_checks("refusals (auth, tenants, oversize)", got, want)
    assert want == got
    # Another tenant's job is indistinguishable from a missing one: same status, same code, same message shape.
    mine, missing = cases[6][1]().json(), cases[7][1]().json()
    assert mine["error"]["message"].split("'")[0] == missing["error"]["message"].split("'")[0]


def test_a_tenant_over_its_rate_limit_gets_429_and_another_tenant_does_not(api: Api, keys: ApiKeyStore) -> None:
    _, busy = keys.create(f"busy-{uuid.uuid4().hex[:6]}")
    _, calm = keys.create(f"calm-{uuid.uuid4().hex[:6]}")
    url = f"{api.url}/v1/moderations/{uuid.uuid4().hex}"
    with httpx.Client() as client:
        statuses = [client.get(url, headers=bearer(busy)).status_code for _ in range(45)]
        limited = client.get(url, headers=bearer(busy))
        other = client.get(url, headers=bearer(calm))
    got = {"first 40": set(statuses[:40]), "41st to 45th": set(statuses[40:]), "other tenant": {other.status_code}}
    want = {"first 40": {404}, "41st to 45th": {429}, "other tenant": {404}}
    record_checks("rate limit (40 per minute)", got, want)
    assert want == got
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def open_trickle(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


def trickle_until_closed(sock: socket.socket, drip: bytes, every_s: float, limit_s: float) -> tuple[float, bytes]:
    """Send ``drip`` every ``every_s`` until the server answers or closes; return (seconds, what it answered)."""
    started = time.monotonic()
    sock.settimeout(every_s)
    answer = b""
    while time.monotonic() - started < limit_s:
        try:
            sock.sendall(drip)
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:  # reset: closed under us
            break
        if not chunk:
            break
        answer += chunk
    return round(time.monotonic() - started, 2), answer


@pytest.mark.timeout(60)
def test_slow_loris_clients_are_cut_off_and_others_are_served_meanwhile(api: Api, keys: ApiKeyStore) -> None:
    _, token = keys.create(f"loris-{uuid.uuid4().hex[:6]}")
    auth = f"Authorization: Bearer {token}\r\n".encode()
    head = b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\n"
    upload_head = b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n" + auth
    upload_head += b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 5000\r\n\r\n--zz\r\n"
    json_head = head + auth + b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"
    crowd = [open_trickle(api.port, head) for _ in range(40)]  # 40 idle half-open requests
    served = httpx.get(f"{api.url}/healthz", timeout=2).status_code  # the server still answers others
    runs = {
        "request head trickled a byte every 0.2 s": trickle_until_closed(open_trickle(api.port, head), b"X", 0.2, 15),
        "upload body trickled a byte every 0.3 s": trickle_until_closed(
            open_trickle(api.port, upload_head), b"x", 0.3, 15
        ),
        "JSON body trickled a byte every 0.3 s": trickle_until_closed(open_trickle(api.port, json_head), b" ", 0.3, 15),
        "JSON body stalls half way": trickle_until_closed(open_trickle(api.port, json_head + b" " * 2000), b"", 5, 15),
    }
    closed = sum(1 for sock in crowd if _closed(sock))
    got = {name: _verdict(seconds, answer) for name, (seconds, answer) in runs.items()}
    got["40 idle half-open connections"] = "closed" if closed == len(crowd) else f"{closed} of 40 closed"
    got["a normal request meanwhile"] = str(served)
    want = {
        "request head trickled a byte every 0.2 s": "closed",
        "upload body trickled a byte every 0.3 s": "408",
        "JSON body trickled a byte every 0.3 s": "408",
        "JSON body stalls half way": "408",
        "40 idle half-open connections": "closed",
        "a normal request meanwhile": "200",
    }
    record_checks(
        "slow-loris (1 s read timeout, 3 s body deadline)", got, want, seconds={k: v[0] for k, v in runs.items()}
    )
    assert want == got
    for name, (seconds, _) in runs.items():
        limit = READ_TIMEOUT_S if "stalls" in name or "head" in name else BODY_TIMEOUT_S
        assert seconds < limit + 2.5, (name, seconds)


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(READ_TIMEOUT_S + 3)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True
    finally:
        sock.close()


def _verdict(seconds: float, answer: bytes) -> str:
    if not answer:
        return "closed"
    return answer.split(b" ", 2)[1].decode()


def record_checks(group: str, got: dict[str, Any], want: dict[str, Any], **extra: Any) -> None:
    held = sum(1 for name in want if got.get(name) == want[name])
    result = Tally("api_security", group, enqueued=len(want), completed=held, failed=len(want) - held)
    result.notes = "; ".join(f"{name}: {got.get(name)}" for name in want)
    result.extra = {"held": held, **extra}
    record(result)
