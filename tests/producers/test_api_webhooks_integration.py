"""``/v1/webhooks``, ``POST /v1/events/replay`` and per-job ``callback_url`` through real HTTP with per-tenant API
keys: a tenant manages only its own subscriptions (another tenant's are 404), targets pass the SSRF check."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis as redis_lib

from producers.api.auth import ApiKeyStore
from schemas.settings import Settings
from tests.conftest import BUCKET
from tests.producers.conftest import ApiServer, bearer, queued_jobs
from tests.producers.test_api_integration import PARKED_MODEL, PARKED_QUEUE
from tests.worker.delivery.factory import make_event, publish
from tests.worker.delivery.services import webhook_settings

pytestmark = pytest.mark.integration

HOOK = "http://127.0.0.2:9/hook"  # allowed by the webhook settings below; nothing needs to listen there


@pytest.fixture(scope="module")
def api(api_settings: Settings) -> Iterator[ApiServer]:
    """The API with the delivery tests' webhook settings (http allowed, 127.0.0.2/32 the one allowed network)."""
    server = ApiServer(webhook_settings(api_settings))
    yield server
    server.stop()


class Caller:
    def __init__(self, api: ApiServer, keys: ApiKeyStore, *scopes: str) -> None:
        self.tenant = f"wh{uuid.uuid4().hex[:8]}"
        self.token = keys.create(self.tenant, *([scopes] if scopes else []))[1]
        self.url = api.url

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=bearer(self.token), **kwargs)


@pytest.fixture
def alice(api: ApiServer, keys: ApiKeyStore) -> Caller:
    return Caller(api, keys)


@pytest.fixture
def bob(api: ApiServer, keys: ApiKeyStore) -> Caller:
    return Caller(api, keys)


def test_a_subscription_is_created_for_the_keys_tenant_with_its_secret_then_listed_fetched_and_deleted(
    alice: Caller,
) -> None:
    created = alice("POST", "/v1/webhooks", json={"url": HOOK, "event_types": ["completed"]})
    assert 201 == created.status_code, created.text
    sub = created.json()
    assert (alice.tenant, ["guardq.moderation.completed"]) == (sub["tenant"], sub["event_types"])
    assert sub["secret"].startswith("whsec_")

    listed = alice("GET", "/v1/webhooks").json()["subscriptions"]
    assert [sub["id"]] == [s["id"] for s in listed]
    assert "secret" not in listed[0]
    assert "secret" not in alice("GET", f"/v1/webhooks/{sub['id']}").json()

    assert 204 == alice("DELETE", f"/v1/webhooks/{sub['id']}").status_code
    assert 404 == alice("GET", f"/v1/webhooks/{sub['id']}").status_code
    assert 404 == alice("DELETE", f"/v1/webhooks/{sub['id']}").status_code


def test_another_tenants_subscription_is_not_found_for_every_operation(alice: Caller, bob: Caller) -> None:
    sub = alice("POST", "/v1/webhooks", json={"url": HOOK}).json()
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    answers = [
        bob("GET", f"/v1/webhooks/{sub['id']}"),
        bob("DELETE", f"/v1/webhooks/{sub['id']}"),
        bob("POST", f"/v1/webhooks/{sub['id']}/enable"),
        bob("POST", f"/v1/webhooks/{sub['id']}/test"),
        bob("POST", "/v1/events/replay", json={"subscription_id": sub["id"], "since": since}),
    ]
    assert [(404, "not_found")] * 5 == [(a.status_code, a.json()["error"]["code"]) for a in answers]
    assert [] == bob("GET", "/v1/webhooks").json()["subscriptions"]
    assert 200 == alice("GET", f"/v1/webhooks/{sub['id']}").status_code  # untouched


def test_a_subscription_for_another_tenant_cannot_be_created(alice: Caller, bob: Caller) -> None:
    refused = alice("POST", "/v1/webhooks", json={"url": HOOK, "tenant": bob.tenant})
    assert (403, "forbidden", "tenant") == (
        refused.status_code,
        refused.json()["error"]["code"],
        refused.json()["error"]["field"],
    )
    assert 201 == alice("POST", "/v1/webhooks", json={"url": HOOK, "tenant": alice.tenant}).status_code


def test_missing_keys_are_401_and_keys_without_the_webhooks_scope_are_403(api: ApiServer, keys: ApiKeyStore) -> None:
    assert 401 == httpx.get(f"{api.url}/v1/webhooks").status_code
    assert 401 == httpx.post(f"{api.url}/v1/webhooks", json={"url": HOOK}, headers=bearer("bogus")).status_code
    moderate_only = Caller(api, keys, "moderate")
    for method, path, body in (("GET", "/v1/webhooks", None), ("POST", "/v1/webhooks", {"url": HOOK})):
        answer = moderate_only(method, path, json=body)
        assert (403, "forbidden") == (answer.status_code, answer.json()["error"]["code"])


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "forbidden_target"),
        ("http://127.0.0.1:6379/", "forbidden_target"),
        ("ftp://127.0.0.2/hook", "forbidden_target"),
    ],
    ids=["metadata-service", "loopback-redis", "scheme"],
)
def test_a_target_the_ssrf_check_refuses_is_a_422_with_a_stable_code(alice: Caller, url: str, code: str) -> None:
    refused = alice("POST", "/v1/webhooks", json={"url": url})
    assert (422, code, "url") == (
        refused.status_code,
        refused.json()["error"]["code"],
        refused.json()["error"]["field"],
    )
    assert [] == alice("GET", "/v1/webhooks").json()["subscriptions"]


def test_an_unknown_event_type_is_a_422_naming_the_field(alice: Caller) -> None:
    refused = alice("POST", "/v1/webhooks", json={"url": HOOK, "event_types": ["deleted"]})
    assert (422, "event_types") == (refused.status_code, refused.json()["error"]["field"])


def test_replay_queues_the_tenants_matching_events_and_a_test_ping_is_queued_for_the_owner_only(
    alice: Caller, bob: Caller, redis_client: redis_lib.Redis
) -> None:
    for event in (make_event(tenant=alice.tenant), make_event(tenant=alice.tenant, failed=True)):
        publish(redis_client, event)
    publish(redis_client, make_event(tenant=bob.tenant))
    sub = alice("POST", "/v1/webhooks", json={"url": HOOK}).json()
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()

    replayed = alice("POST", "/v1/events/replay", json={"subscription_id": sub["id"], "since": since})
    assert (202, 2) == (replayed.status_code, replayed.json()["queued"])
    only_failed = alice(
        "POST", "/v1/events/replay", json={"subscription_id": sub["id"], "since": since, "types": ["failed"]}
    )
    assert 1 == only_failed.json()["queued"]

    ping = alice("POST", f"/v1/webhooks/{sub['id']}/test")
    assert 202 == ping.status_code
    delivery = f"/v1/webhooks/deliveries/{ping.json()['delivery_id']}"
    state = alice("GET", delivery).json()
    assert ("pending", "0") == (state["state"], state["attempts"])  # no webhook worker runs in this module
    assert 404 == bob("GET", delivery).status_code


def test_a_moderation_with_an_allowed_callback_url_is_queued_with_it(
    alice: Caller, redis_client: redis_lib.Redis
) -> None:
    redis_client.delete(PARKED_QUEUE)
    try:
        body = {"source": f"s3://{BUCKET}/cb.jpg", "model": PARKED_MODEL, "callback_url": f"{HOOK}/{alice.tenant}"}
        accepted = alice("POST", "/v1/moderations", json=body)
        assert 202 == accepted.status_code, accepted.text
        assert [f"{HOOK}/{alice.tenant}"] == [j["callback_url"] for j in queued_jobs(redis_client, PARKED_QUEUE)]
    finally:
        redis_client.delete(PARKED_QUEUE)
