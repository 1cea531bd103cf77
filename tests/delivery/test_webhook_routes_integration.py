"""The /v1/webhooks and /v1/events/replay router, mounted on a throwaway FastAPI app, against real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from producers.api_routes.webhooks import DeliveryContext, delivery_context, router
from schemas.settings import Settings
from tests.delivery.factory import make_event, publish
from tests.delivery.services import webhook_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_client: redis.Redis, settings: Settings) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[delivery_context] = lambda: DeliveryContext(redis_client, webhook_settings(settings))
    with TestClient(app) as test_client:
        yield test_client


def tenant() -> str:
    return f"api{uuid.uuid4().hex[:8]}"


def test_a_subscription_is_created_with_its_secret_then_listed_fetched_and_deleted_without_it(
    client: TestClient,
) -> None:
    name = tenant()
    created = client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.2:9/hook", "tenant": name, "event_types": ["completed"]}
    )
    assert 201 == created.status_code
    sub = created.json()
    assert sub["secret"].startswith("whsec_")
    assert ["guardq.moderation.completed"] == sub["event_types"]

    listed = client.get("/v1/webhooks", params={"tenant": name}).json()["subscriptions"]
    assert [sub["id"]] == [s["id"] for s in listed]
    assert "secret" not in listed[0]
    assert "secret" not in client.get(f"/v1/webhooks/{sub['id']}").json()

    assert 204 == client.delete(f"/v1/webhooks/{sub['id']}").status_code
    assert 404 == client.get(f"/v1/webhooks/{sub['id']}").status_code
    assert 404 == client.delete(f"/v1/webhooks/{sub['id']}").status_code


def test_a_target_inside_the_network_is_refused_with_422_and_a_stable_code(client: TestClient) -> None:
    refused = client.post("/v1/webhooks", json={"url": "http://169.254.169.254/latest/meta-data"})
    assert 422 == refused.status_code
    assert "forbidden_target" == refused.json()["detail"]["code"]


def test_an_unknown_event_type_is_refused_with_422(client: TestClient) -> None:
    refused = client.post("/v1/webhooks", json={"url": "http://127.0.0.2:9/x", "event_types": ["deleted"]})
    assert 422 == refused.status_code


def test_replay_queues_one_delivery_per_matching_stored_event_and_a_test_ping_is_queued(
    client: TestClient, redis_client: redis.Redis
) -> None:
    name = tenant()
    for event in (make_event(tenant=name), make_event(tenant=name, failed=True), make_event(tenant=tenant())):
        publish(redis_client, event)
    sub = client.post("/v1/webhooks", json={"url": "http://127.0.0.2:9/hook", "tenant": name}).json()
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    replayed = client.post("/v1/events/replay", json={"subscription_id": sub["id"], "since": since})
    assert 202 == replayed.status_code
    assert 2 == replayed.json()["queued"]
    only_failed = client.post(
        "/v1/events/replay", json={"subscription_id": sub["id"], "since": since, "types": ["failed"]}
    )
    assert 1 == only_failed.json()["queued"]

    ping = client.post(f"/v1/webhooks/{sub['id']}/test")
    assert 202 == ping.status_code
    state = client.get(f"/v1/webhooks/deliveries/{ping.json()['delivery_id']}").json()
    assert ("pending", "0") == (state["state"], state["attempts"])  # no webhook worker runs in this module
    assert 404 == client.post("/v1/events/replay", json={"subscription_id": "sub_nope", "since": since}).status_code
