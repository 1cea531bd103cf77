"""The HTTP API through real HTTP (uvicorn on a free port, httpx): moderation requests end to end with a real
worker, job status and tenant isolation, authentication, validation, idempotency, rate limits, health."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
import redis as redis_lib

from producers.api.auth import ApiKeyStore
from producers.api.idempotency import fingerprint, keyed_job_id
from producers.rediskeys import idempotency_key
from schemas.keys import job_key, queue_name
from schemas.models import get_model
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET, Runner
from tests.producers.conftest import ApiServer, bearer, queued_jobs
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration

PARKED_MODEL = "AIML-TUDA/LlavaGuard-13B"  # no test worker consumes its queue: what is sent there stays countable
PARKED_QUEUE = queue_name(get_model(PARKED_MODEL))


@pytest.fixture
def parked(redis_client: redis_lib.Redis) -> Any:
    redis_client.delete(PARKED_QUEUE)
    yield lambda: queued_jobs(redis_client, PARKED_QUEUE)
    redis_client.delete(PARKED_QUEUE)


@pytest.fixture
def tenant(keys: ApiKeyStore) -> tuple[str, str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    return name, keys.create(name)[1]


def put_image(s3_client: Any, key: str, data: bytes | None = None) -> str:
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data or images.solid())
    return f"s3://{BUCKET}/{key}"


def test_a_moderation_request_is_queued_with_202_and_its_status_url_shows_the_verdict_once_done(
    api: ApiServer, tenant: tuple[str, str], runner: Runner, s3_client: Any
) -> None:
    name, token = tenant
    source = put_image(s3_client, f"api/{uuid.uuid4().hex}.jpg")
    body = {"source": source, "metadata": {"post": "7"}, "policy": {"declarations": {"O2": "non_violating"}}}

    response = httpx.post(f"{api.url}/v1/moderations", json=body, headers=bearer(token))

    assert 202 == response.status_code, response.text
    accepted = response.json()
    assert (source, name, "queued") == (accepted["image"], accepted["tenant"], accepted["status"])
    assert f"{api.url}/v1/moderations/{accepted['job_id']}" == accepted["status_url"] == response.headers["location"]
    event = next(wait_for(runner.queue.redis, [accepted["job_id"]], after="0-0", timeout_s=30))  # the real worker

    status = httpx.get(accepted["status_url"], headers=bearer(token)).json()
    assert ("completed", name, {"post": "7"}) == (
        status["status"],
        status["tenant"],
        status["event"]["data"]["metadata"],
    )
    assert event.id == status["event"]["id"]
    assert "custom" == status["event"]["data"]["policy"]["name"]  # an unnamed inline policy is "custom"


def test_a_job_of_another_tenant_is_not_found_like_a_job_that_does_not_exist(
    api: ApiServer, keys: ApiKeyStore, s3_client: Any, parked: Any
) -> None:
    _, owner = keys.create(f"owner-{uuid.uuid4().hex[:6]}")
    _, other = keys.create(f"other-{uuid.uuid4().hex[:6]}")
    body = {"source": f"s3://{BUCKET}/api/x.jpg", "model": PARKED_MODEL}
    job_id = httpx.post(f"{api.url}/v1/moderations", json=body, headers=bearer(owner)).json()["job_id"]

    mine = httpx.get(f"{api.url}/v1/moderations/{job_id}", headers=bearer(owner))
    theirs = httpx.get(f"{api.url}/v1/moderations/{job_id}", headers=bearer(other))
    missing = httpx.get(f"{api.url}/v1/moderations/{uuid.uuid4().hex}", headers=bearer(owner))

    assert (200, "queued") == (mine.status_code, mine.json()["status"])
    assert (404, "not_found") == (theirs.status_code, theirs.json()["error"]["code"])
    assert (404, "not_found") == (missing.status_code, missing.json()["error"]["code"])


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_api_key"),
        ({"Authorization": "Token abc"}, 401, "missing_api_key"),
        ({"Authorization": "Bearer not-a-guardq-key"}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer gq_000000000000_" + "x" * 43}, 401, "invalid_api_key"),
    ],
    ids=["no-header", "wrong-scheme", "malformed", "unknown-key"],
)
def test_requests_without_a_valid_key_get_401_with_a_bearer_challenge(
    api: ApiServer, headers: dict[str, str], status: int, code: str
) -> None:
    response = httpx.post(f"{api.url}/v1/moderations", json={"source": "s3://b/k.jpg"}, headers=headers)
    assert (status, code) == (response.status_code, response.json()["error"]["code"])
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_key_a_missing_scope_and_a_foreign_bucket_get_403(api: ApiServer, keys: ApiKeyStore) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    revoked_id, revoked = keys.create(name)
    keys.revoke(name, revoked_id)
    _, intake_only = keys.create(name, scopes=("intake",))
    _, one_bucket = keys.create(name, buckets=("allowed-bucket",))
    body = {"source": f"s3://{BUCKET}/k.jpg"}

    answers = [
        httpx.post(f"{api.url}/v1/moderations", json=body, headers=bearer(token)).json()["error"]["code"]
        for token in (revoked, intake_only, one_bucket)
    ]
    assert ["api_key_revoked", "forbidden", "bucket_not_allowed"] == answers


def test_the_key_is_also_accepted_as_the_basic_auth_password_as_sns_sends_it(
    api: ApiServer, tenant: tuple[str, str], parked: Any
) -> None:
    _, token = tenant
    body = {"source": f"s3://{BUCKET}/k.jpg", "model": PARKED_MODEL}
    response = httpx.post(f"{api.url}/v1/moderations", json=body, auth=("sns", token))
    assert 202 == response.status_code, response.text


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"source": "http://example.com/a.jpg"}, 422, "invalid_source", "source"),
        ({"source": "upload://abc.jpg"}, 422, "invalid_source", "source"),
        ({"source": "s3://bucket-only"}, 422, "invalid_source", "source"),
        ({"source": "s3://b/k.jpg", "colour": "red"}, 422, "invalid_request", "colour"),
        ({"source": "s3://b/k.jpg", "policy": "never-stored"}, 422, "policy_unknown", "policy"),
        ({"source": "s3://b/k.jpg", "policy": {"declarations": {"O42": "sensitive"}}}, 422, "invalid_request", None),
        ({"source": "s3://b/k.jpg", "model": "LlavaGuard-999B"}, 422, "model_unknown", "model"),
        (
            {"source": "s3://b/k.jpg", "callback_url": "http://hooks.example/x"},
            422,
            "invalid_callback_url",
            "callback_url",
        ),
        ({"source": "s3://b/k.jpg", "callback_url": "https://10.0.0.1/x"}, 422, "invalid_callback_url", "callback_url"),
        ({"source": "s3://b/k.jpg", "metadata": {"x": "y" * 20_000}}, 422, "invalid_request", "metadata"),
    ],
    ids=[
        "http",
        "upload-ref",
        "no-key",
        "unknown-field",
        "unknown-policy",
        "unknown-category",
        "unknown-model",
        "http-callback",
        "private-callback",
        "metadata-too-large",
    ],
)
def test_a_bad_request_gets_a_precise_4xx_json_error_and_nothing_is_queued(
    api: ApiServer,
    tenant: tuple[str, str],
    parked: Any,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    body = {**body, "model": body.get("model", PARKED_MODEL)}
    response = httpx.post(f"{api.url}/v1/moderations", json=body, headers=bearer(tenant[1]))
    error = response.json()["error"]
    assert (status, code) == (response.status_code, error["code"]), error
    if field:
        assert field == error.get("field")
    assert [] == parked()


@pytest.mark.parametrize(
    ("callback", "reason"),
    [
        ("https://10.0.0.1/x", "refusing to connect to '10.0.0.1': it resolves to non-public address 10.0.0.1"),
        ("https://127.0.0.2/x", "refusing to connect to '127.0.0.2': it resolves to non-public address 127.0.0.2"),
        ("http://hooks.example/x", "URL scheme 'http' is not allowed; use https"),
        ("https://u:p@hooks.example/x", "URL must not carry credentials"),
        ("https:///x", "has no host"),
    ],
    ids=["private", "loopback-allowed-for-images-only", "http", "credentials", "no-host"],
)
def test_a_callback_url_is_checked_like_a_webhook_target_with_a_precise_message(
    api: ApiServer, tenant: tuple[str, str], parked: Any, callback: str, reason: str
) -> None:
    body = {"source": f"s3://{BUCKET}/k.jpg", "model": PARKED_MODEL, "callback_url": callback}
    response = httpx.post(f"{api.url}/v1/moderations", json=body, headers=bearer(tenant[1]))
    error = response.json()["error"]
    assert (422, "invalid_callback_url", "callback_url") == (response.status_code, error["code"], error["field"])
    assert error["message"].startswith("callback_url refused: ")
    assert reason in error["message"]
    assert [] == parked()


def test_a_body_that_is_not_json_gets_400(api: ApiServer, tenant: tuple[str, str]) -> None:
    headers = {**bearer(tenant[1]), "content-type": "application/json"}
    response = httpx.post(f"{api.url}/v1/moderations", content=b"{not json", headers=headers)
    assert (400, "invalid_json") == (response.status_code, response.json()["error"]["code"])


def test_an_idempotency_key_replays_the_same_job_and_refuses_a_different_body(
    api: ApiServer, tenant: tuple[str, str], parked: Any
) -> None:
    headers = {**bearer(tenant[1]), "Idempotency-Key": str(uuid.uuid4())}
    body = {"source": f"s3://{BUCKET}/idem.jpg", "model": PARKED_MODEL}

    first = httpx.post(f"{api.url}/v1/moderations", json=body, headers=headers)
    again = httpx.post(f"{api.url}/v1/moderations", json=body, headers=headers)
    changed = httpx.post(f"{api.url}/v1/moderations", json={**body, "metadata": {"a": 1}}, headers=headers)

    assert (202, 202) == (first.status_code, again.status_code)
    assert first.json() == again.json()
    assert "true" == again.headers.get("idempotent-replayed")
    assert (422, "idempotency_key_reused") == (changed.status_code, changed.json()["error"]["code"])
    assert [first.json()["job_id"]] == [j["job_id"] for j in parked()]  # sent once


def test_a_key_reused_after_its_lifetime_gets_409_and_never_the_old_jobs_verdict(
    api: ApiServer, tenant: tuple[str, str], parked: Any, redis_client: redis_lib.Redis
) -> None:
    """The key's record lives a day, its job and publish guard a week: a reuse in between must not map to the
    old job (whose guard would swallow the new one and whose status shows the old verdict)."""
    name, token = tenant
    key = str(uuid.uuid4())
    headers = {**bearer(token), "Idempotency-Key": key}
    first = httpx.post(
        f"{api.url}/v1/moderations", json={"source": f"s3://{BUCKET}/old.jpg", "model": PARKED_MODEL}, headers=headers
    )
    assert 202 == first.status_code
    job_id = first.json()["job_id"]
    redis_client.delete(idempotency_key(name, key))  # a day later: the key's record expired, the job's did not
    redis_client.hset(job_key(job_id), "enqueued_at", time.time() - 25 * 3600)
    reused = httpx.post(
        f"{api.url}/v1/moderations", json={"source": f"s3://{BUCKET}/new.jpg", "model": PARKED_MODEL}, headers=headers
    )
    assert (409, "idempotency_key_expired") == (reused.status_code, reused.json()["error"]["code"])
    assert job_id in reused.json()["error"]["message"]
    assert [job_id] == [j["job_id"] for j in parked()]  # nothing new sent under the old id
    fresh = httpx.post(
        f"{api.url}/v1/moderations",
        json={"source": f"s3://{BUCKET}/new.jpg", "model": PARKED_MODEL},
        headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert 202 == fresh.status_code and fresh.json()["job_id"] != job_id


def test_a_key_reused_after_its_finished_job_outlived_it_gets_409(
    api: ApiServer, tenant: tuple[str, str], parked: Any, redis_client: redis_lib.Redis
) -> None:
    """The issue's case: the first job completed 25 h ago; its compact record (and guard) lives a week."""
    name, token = tenant
    key = str(uuid.uuid4())
    old_job = keyed_job_id(name, key)
    finished_ms = int((time.time() - 25 * 3600) * 1000)
    redis_client.hset(job_key(old_job), mapping={"state": "completed", "stream_id": f"{finished_ms}-0", "tenant": name})
    redis_client.expire(job_key(old_job), 3600)
    body = {"source": f"s3://{BUCKET}/new.jpg", "model": PARKED_MODEL}
    reused = httpx.post(f"{api.url}/v1/moderations", json=body, headers={**bearer(token), "Idempotency-Key": key})
    assert (409, "idempotency_key_expired") == (reused.status_code, reused.json()["error"]["code"])
    assert [] == parked()


def test_a_retry_after_a_crash_between_enqueue_and_answer_gets_the_same_job_sent_once(
    api: ApiServer, tenant: tuple[str, str], parked: Any, redis_client: redis_lib.Redis
) -> None:
    name, token = tenant
    key = str(uuid.uuid4())
    headers = {**bearer(token), "Idempotency-Key": key}
    body = {"source": f"s3://{BUCKET}/crash.jpg", "model": PARKED_MODEL}
    first = httpx.post(f"{api.url}/v1/moderations", json=body, headers=headers)
    redis_client.delete(idempotency_key(name, key))  # the API died before storing its answer; the pending claim expired
    again = httpx.post(f"{api.url}/v1/moderations", json=body, headers=headers)
    assert (202, first.json()["job_id"]) == (again.status_code, again.json()["job_id"])
    assert [first.json()["job_id"]] == [j["job_id"] for j in parked()]


def test_a_request_repeated_while_the_first_is_still_running_gets_409(
    api: ApiServer, tenant: tuple[str, str], redis_client: redis_lib.Redis
) -> None:
    name, token = tenant
    key = str(uuid.uuid4())
    body = {"source": f"s3://{BUCKET}/idem.jpg", "model": PARKED_MODEL}
    as_validated = {**body, "policy": None, "metadata": {}, "callback_url": None}
    pending = {"fingerprint": fingerprint("POST", "/v1/moderations", as_validated), "state": "pending"}
    redis_client.set(idempotency_key(name, key), json.dumps(pending), ex=30)
    response = httpx.post(f"{api.url}/v1/moderations", json=body, headers={**bearer(token), "Idempotency-Key": key})
    assert (409, "idempotency_in_progress", "1") == (
        response.status_code,
        response.json()["error"]["code"],
        response.headers.get("retry-after"),
    )


def test_a_tenant_over_its_rate_limit_gets_429_with_retry_after_and_other_tenants_are_unaffected(
    api_settings: Settings, keys: ApiKeyStore
) -> None:
    server = ApiServer(api_settings.model_copy(update={"api_rate_limit": 3, "api_rate_window_s": 60}))
    try:
        _, busy = keys.create(f"busy-{uuid.uuid4().hex[:6]}")
        _, calm = keys.create(f"calm-{uuid.uuid4().hex[:6]}")
        url = f"{server.url}/v1/moderations/{uuid.uuid4().hex}"
        codes = [httpx.get(url, headers=bearer(busy)).status_code for _ in range(4)]
        limited = httpx.get(url, headers=bearer(busy))
        other = httpx.get(url, headers=bearer(calm))
    finally:
        server.stop()
    assert [404, 404, 404, 429] == codes
    assert (429, "rate_limited") == (limited.status_code, limited.json()["error"]["code"])
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert 404 == other.status_code


def test_health_and_readiness_and_the_openapi_docs(api: ApiServer, api_settings: Settings) -> None:
    dead = ApiServer(api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    try:
        not_ready = httpx.get(f"{dead.url}/readyz")
        still_live = httpx.get(f"{dead.url}/healthz")
    finally:
        dead.stop()
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert (200, {"status": "ok"}) == (
        httpx.get(f"{api.url}/healthz").status_code,
        httpx.get(f"{api.url}/healthz").json(),
    )
    assert (200, {"status": "ready"}) == (
        httpx.get(f"{api.url}/readyz").status_code,
        httpx.get(f"{api.url}/readyz").json(),
    )
    assert (503, "unavailable") == (not_ready.status_code, not_ready.json()["error"]["code"])
    assert 200 == still_live.status_code
    assert 200 == httpx.get(f"{api.url}/docs").status_code
    assert {"/v1/moderations", "/v1/moderations/{job_id}", "/v1/uploads", "/v1/intake/s3-events"} <= set(
        schema["paths"]
    )
    assert "multipart/form-data" in schema["paths"]["/v1/uploads"]["post"]["requestBody"]["content"]


def test_with_redis_down_a_request_gets_503_and_nothing_is_claimed(api_settings: Settings) -> None:
    dead = ApiServer(api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    try:
        response = httpx.post(
            f"{dead.url}/v1/moderations", json={"source": "s3://b/k.jpg"}, headers=bearer("gq_000000000000_" + "x" * 43)
        )
    finally:
        dead.stop()
    assert (503, "unavailable") == (response.status_code, response.json()["error"]["code"])


def test_unknown_paths_and_wrong_methods_also_get_json_errors(api: ApiServer) -> None:
    missing = httpx.get(f"{api.url}/v2/nothing")
    wrong = httpx.delete(f"{api.url}/v1/moderations")
    assert (404, "not_found") == (missing.status_code, missing.json()["error"]["code"])
    assert (405, "method_not_allowed") == (wrong.status_code, wrong.json()["error"]["code"])
