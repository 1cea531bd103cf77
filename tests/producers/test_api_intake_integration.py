"""``POST /v1/intake/s3-events`` through real HTTP: direct S3 notifications, SNS envelopes with a loopback SNS
stand-in for the subscription handshake, EventBridge events, test events, key decoding, dedupe, and a real worker
fetching an object whose key has spaces and non-ASCII characters."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
import redis as redis_lib

from producers.api.auth import ApiKeyStore
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET, Runner
from tests.producers.conftest import ApiServer, bearer, queued_jobs
from tests.producers.test_api_integration import PARKED_MODEL, PARKED_QUEUE
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration

TOPIC = "arn:aws:sns:us-east-1:123456789012:uploads"


class SnsStandIn:
    """Plays SNS's ConfirmSubscription endpoint on 127.0.0.2 and records what it was asked."""

    def __init__(self) -> None:
        calls = self.calls = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                calls.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "text/xml")
                self.end_headers()
                self.wfile.write(b"<ConfirmSubscriptionResponse/>")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def subscribe_url(self, host: str | None = None, topic: str = TOPIC) -> str:
        return f"http://{host or '127.0.0.2'}:{self.port}/?Action=ConfirmSubscription&TopicArn={topic}&Token=tok123"

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsStandIn]:
    stand_in = SnsStandIn()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def token(keys: ApiKeyStore) -> str:
    return keys.create(f"in-{uuid.uuid4().hex[:8]}", scopes=("intake",))[1]


@pytest.fixture
def parked(redis_client: redis_lib.Redis) -> Iterator[Any]:
    redis_client.delete(PARKED_QUEUE)
    yield lambda: queued_jobs(redis_client, PARKED_QUEUE)
    redis_client.delete(PARKED_QUEUE)


def record(key: str, *, name: str = "ObjectCreated:Put", sequencer: str | None = None) -> dict[str, Any]:
    """One record as S3 writes it: the key form-URL-encoded."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-28T01:00:00.000Z",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "guardq",
            "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
            "object": {
                "key": quote_plus(key, safe="/"),
                "size": 100,
                "eTag": "abc",
                "sequencer": sequencer or uuid.uuid4().hex[:16].upper(),
            },
        },
    }


def sns_envelope(kind: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-11-28T01:00:00.000Z",
        "SignatureVersion": "1",
        **extra,
    }


def post(
    api: ApiServer, token: str, body: Any, *, params: dict[str, str] | None = None, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{api.url}/v1/intake/s3-events",
        content=json.dumps(body).encode(),
        params={"model": PARKED_MODEL} if params is None else params,
        headers={**bearer(token), "content-type": "text/plain; charset=UTF-8", **headers},
    )


def uris(jobs: list[dict[str, Any]]) -> list[str]:
    return [j["image"]["uri"] for j in jobs]


def test_direct_notifications_queue_one_job_per_created_object_with_decoded_keys(
    api: ApiServer, token: str, parked: Any
) -> None:
    keys = ["in/red flower.jpg", "in/a+b.jpg", "in/日本/猫 1.jpg"]
    body = {"Records": [*(record(k) for k in keys), record("in/old.jpg", name="ObjectRemoved:Delete")]}

    response = post(api, token, body)

    assert 202 == response.status_code, response.text
    assert (3, 0, 1, "direct") == (
        len(response.json()["queued"]),
        response.json()["duplicates"],
        response.json()["ignored"],
        response.json()["shape"],
    )
    assert [f"s3://{BUCKET}/{k}" for k in keys] == uris(parked())
    assert {"ObjectCreated:Put"} == {j["metadata"]["s3_event"] for j in parked()}


def test_a_redelivered_notification_is_deduplicated_on_bucket_key_and_sequencer(
    api: ApiServer, token: str, parked: Any
) -> None:
    body = {"Records": [record("in/dup.jpg", sequencer="00A1"), record("in/dup.jpg", sequencer="00A2")]}
    first = post(api, token, body)
    again = post(api, token, body)
    assert (202, 2) == (first.status_code, len(first.json()["queued"]))  # two writes of one key: two jobs
    assert (200, [], 2) == (again.status_code, again.json()["queued"], again.json()["duplicates"])
    assert 2 == len(parked())


def test_notifications_wrapped_by_sns_are_unwrapped_and_decoded_the_same_way(
    api: ApiServer, token: str, parked: Any
) -> None:
    message = json.dumps({"Records": [record("in/sns é+x.jpg")]})
    response = post(api, token, sns_envelope("Notification", message), **{"x-amz-sns-message-type": "Notification"})
    assert (202, "sns") == (response.status_code, response.json()["shape"])
    assert [f"s3://{BUCKET}/in/sns é+x.jpg"] == uris(parked())


def test_eventbridge_events_are_queued_with_their_keys_used_verbatim(api: ApiServer, token: str, parked: Any) -> None:
    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-28T01:00:00Z",
        "region": "us-east-1",
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": {"key": "in/eb a+b%20c.jpg", "size": 5, "etag": "e", "sequencer": "0055"},
            "reason": "PutObject",
        },
    }
    deleted = {**event, "id": str(uuid.uuid4()), "detail-type": "Object Deleted"}
    response = post(api, token, event)
    ignored = post(api, token, deleted)
    assert (202, "eventbridge") == (response.status_code, response.json()["shape"])
    assert (200, 1) == (ignored.status_code, ignored.json()["ignored"])
    assert [f"s3://{BUCKET}/in/eb a+b%20c.jpg"] == uris(parked())


def test_s3_test_events_are_ignored_directly_and_inside_sns(api: ApiServer, token: str, parked: Any) -> None:
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-11-28T01:00:00Z",
        "Bucket": BUCKET,
        "RequestId": "R",
        "HostId": "H",
    }
    direct = post(api, token, test_event)
    wrapped = post(api, token, sns_envelope("Notification", json.dumps(test_event)))
    assert (200, "s3:TestEvent") == (direct.status_code, direct.json()["ignored"])
    assert (200, "s3:TestEvent") == (wrapped.status_code, wrapped.json()["ignored"])
    assert [] == parked()


def test_an_sns_subscription_is_confirmed_by_getting_its_subscribe_url_through_the_guarded_client(
    api: ApiServer, token: str, sns: SnsStandIn
) -> None:
    before = len(sns.calls)
    body = sns_envelope(
        "SubscriptionConfirmation", "You have chosen to subscribe", Token="tok123", SubscribeURL=sns.subscribe_url()
    )
    response = post(api, token, body, **{"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert (200, "confirmed") == (response.status_code, response.json()["subscription"]), response.text
    assert [f"/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=tok123"] == sns.calls[before:]


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("http://127.0.0.1:{port}/?Action=ConfirmSubscription&TopicArn=" + TOPIC, 400, "subscribe_url_not_allowed"),
        ("https://evil.example/?Action=ConfirmSubscription&TopicArn=" + TOPIC, 400, "subscribe_url_not_allowed"),
        ("http://127.0.0.2:{port}/?Action=Unsubscribe&TopicArn=" + TOPIC, 400, "subscribe_url_not_allowed"),
        (
            "https://sns.us-east-1.amazonaws.com.evil.example/?Action=ConfirmSubscription",
            400,
            "subscribe_url_not_allowed",
        ),
    ],
    ids=["unlisted-loopback-host", "foreign-host", "not-a-confirmation", "lookalike-host"],
)
def test_a_subscribe_url_that_is_not_sns_is_refused_without_being_fetched(
    api: ApiServer, token: str, sns: SnsStandIn, url: str, status: int, code: str
) -> None:
    before = len(sns.calls)
    body = sns_envelope("SubscriptionConfirmation", "x", SubscribeURL=url.format(port=sns.port))
    response = post(api, token, body)
    assert (status, code) == (response.status_code, response.json()["error"]["code"])
    assert before == len(sns.calls)


def test_with_auto_confirm_off_the_subscribe_url_is_returned_for_the_operator_and_not_fetched(
    api_settings: Settings, keys: ApiKeyStore, sns: SnsStandIn
) -> None:
    server = ApiServer(api_settings.model_copy(update={"sns_auto_confirm": False}))
    try:
        _, key = keys.create(f"in-{uuid.uuid4().hex[:8]}", scopes=("intake",))
        before = len(sns.calls)
        body = sns_envelope("SubscriptionConfirmation", "x", SubscribeURL=sns.subscribe_url())
        response = post(server, key, body)
    finally:
        server.stop()
    assert (200, "pending", sns.subscribe_url()) == (
        response.status_code,
        response.json()["subscription"],
        response.json()["subscribe_url"],
    )
    assert before == len(sns.calls)


def test_topics_outside_the_allowlist_are_refused(api_settings: Settings, keys: ApiKeyStore) -> None:
    other = "arn:aws:sns:us-east-1:123456789012:other"
    server = ApiServer(api_settings.model_copy(update={"sns_topic_arns": [other]}))
    try:
        _, key = keys.create(f"in-{uuid.uuid4().hex[:8]}", scopes=("intake",))
        response = post(server, key, sns_envelope("Notification", json.dumps({"Records": []})))
    finally:
        server.stop()
    assert (403, "topic_not_allowed") == (response.status_code, response.json()["error"]["code"])


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"Records": [record("in/ok.jpg"), {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}}}]},
            422,
            "invalid_s3_event",
        ),
        ({"hello": "world"}, 422, "invalid_s3_event"),
        ([1, 2], 422, "invalid_s3_event"),
        (sns_envelope("Notification", "not json"), 422, "invalid_s3_event"),
    ],
    ids=["one-bad-record", "unknown-shape", "not-an-object", "sns-message-not-json"],
)
def test_a_bad_payload_is_rejected_whole_and_nothing_is_queued(
    api: ApiServer, token: str, parked: Any, body: Any, status: int, code: str
) -> None:
    response = post(api, token, body)
    assert (status, code) == (response.status_code, response.json()["error"]["code"])
    assert [] == parked()


def test_intake_needs_the_intake_scope_and_an_allowed_bucket(api: ApiServer, keys: ApiKeyStore, parked: Any) -> None:
    name = f"in-{uuid.uuid4().hex[:8]}"
    _, moderate_only = keys.create(name, scopes=("moderate",))
    _, other_bucket = keys.create(name, scopes=("intake",), buckets=("somewhere-else",))
    body = {"Records": [record("in/x.jpg")]}
    assert "forbidden" == post(api, moderate_only, body).json()["error"]["code"]
    assert "bucket_not_allowed" == post(api, other_bucket, body).json()["error"]["code"]
    assert [] == parked()


def test_an_event_for_a_key_with_spaces_and_unicode_gets_the_real_object_moderated(
    api: ApiServer, token: str, runner: Runner, s3_client: Any
) -> None:
    key = f"in/{uuid.uuid4().hex[:6]} summer photo ü+猫.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=images.solid())
    response = post(api, token, {"Records": [record(key)]}, params={})

    job_id = response.json()["queued"][0]["job_id"]
    event = next(wait_for(runner.queue.redis, [job_id], after="0-0", timeout_s=30))
    assert event.completed, event.data.error
    assert f"s3://{BUCKET}/{key}" == event.subject
