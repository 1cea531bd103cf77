"""Signed webhooks end to end: real Redis, the real `guardq webhooks worker`, a real receiver on loopback that
verifies every request with the `standardwebhooks` library from PyPI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas.events import CloudEvent
from schemas.job import ImageRef, ModerationJob
from schemas.keys import VERDICT_STREAM, job_key
from schemas.settings import Settings
from schemas.webhooks import Delivery, DeliveryTarget, Subscription
from tests import images
from tests.conftest import BUCKET, Runner
from tests.services.procs import ROOT, Service, wait_until
from tests.worker.delivery.factory import make_event, publish
from tests.worker.delivery.receiver import Receiver
from tests.worker.delivery.services import WEBHOOK_ENV, start_webhook_worker, webhook_settings
from worker.delivery.keys import WEBHOOK_DISPATCH_GROUP, WEBHOOK_DLQ_STREAM
from worker.delivery.webhooks.deliveries import DeliveryStore
from worker.delivery.webhooks.registry import SubscriptionRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def webhook_worker(worker_env: dict[str, str], session_dir: Path) -> Iterator[Service]:
    service = start_webhook_worker(worker_env, session_dir / "webhooks")
    yield service
    service.stop()


@pytest.fixture
def registry(redis_client: redis.Redis, settings: Settings) -> SubscriptionRegistry:
    return SubscriptionRegistry(redis_client, webhook_settings(settings))


def subscribe(
    registry: SubscriptionRegistry, receiver: Receiver, *, script: list[Any] | None = None, **kw: Any
) -> tuple[Subscription, str]:
    """A fresh tenant with one subscription to a fresh receiver path."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    path = f"/hooks/{tenant}"
    sub = registry.add(url=receiver.url(path), tenant=tenant, **kw)
    receiver.route(path, secret=sub.secret, script=script)
    return sub, path


def dead_letters(client: redis.Redis, event_id: str) -> list[dict[bytes, bytes]]:
    out = []
    for _, fields in client.xrange(WEBHOOK_DLQ_STREAM):
        if json.loads(fields[b"record"])["event_id"] == event_id:
            out.append(fields)
    return out


def test_every_event_is_delivered_signed_with_the_event_id_as_webhook_id_and_the_cloudevent_as_body(
    webhook_worker: Service, receiver: Receiver, registry: SubscriptionRegistry, redis_client: redis.Redis
) -> None:
    sub, path = subscribe(registry, receiver)
    events = [make_event(tenant=sub.tenant), make_event(tenant=sub.tenant, failed=True)]
    for event in events:
        publish(redis_client, event)
    wait_until(lambda: len(receiver.accepted(path)) == 2, 15, "two deliveries")
    got = receiver.requests(path)
    assert [True, True] == [r.verified for r in got]
    assert sorted(e.id for e in events) == sorted(r.webhook_id for r in got)
    by_id = {r.webhook_id: r for r in got}
    for event in events:
        assert event == CloudEvent.model_validate_json(by_id[event.id].body)


def test_a_subscription_gets_only_its_tenant_and_the_event_types_it_asked_for(
    webhook_worker: Service, receiver: Receiver, registry: SubscriptionRegistry, redis_client: redis.Redis
) -> None:
    sub, path = subscribe(registry, receiver, event_types=["failed"])
    other, other_path = subscribe(registry, receiver)
    failed = make_event(tenant=sub.tenant, failed=True)
    for event in (make_event(tenant=sub.tenant), failed, make_event(tenant=other.tenant)):
        publish(redis_client, event)
    wait_until(lambda: len(receiver.accepted(other_path)) == 1 and len(receiver.accepted(path)) >= 1, 15, "deliveries")
    publish(redis_client, marker := make_event(tenant=sub.tenant, failed=True))
    wait_until(lambda: len(receiver.accepted(path)) == 2, 15, "marker delivery")  # everything before it was handled
    assert [failed.id, marker.id] == [r.webhook_id for r in receiver.accepted(path)]


def test_a_receiver_that_fails_three_times_then_succeeds_gets_exactly_one_accepted_delivery_per_event(
    webhook_worker: Service, receiver: Receiver, registry: SubscriptionRegistry, redis_client: redis.Redis
) -> None:
    sub, path = subscribe(registry, receiver, script=[500, 503, 502, 500, 503, 502])
    events = [make_event(tenant=sub.tenant), make_event(tenant=sub.tenant)]
    for event in events:
        publish(redis_client, event)
    wait_until(lambda: len(receiver.accepted(path)) == 2, 20, "deliveries after failures")
    got = receiver.requests(path)
    assert 8 == len(got)  # 6 failures + 2 successes, every one of them signed correctly
    assert all(r.verified for r in got)
    assert sorted(e.id for e in events) == sorted(r.webhook_id for r in receiver.accepted(path))
    assert {e.id: 4 for e in events} == {i: sum(r.webhook_id == i for r in got) for i in {r.webhook_id for r in got}}


def test_a_429_with_retry_after_delays_the_next_attempt_by_at_least_that_long(
    webhook_worker: Service, receiver: Receiver, registry: SubscriptionRegistry, redis_client: redis.Redis
) -> None:
    sub, path = subscribe(registry, receiver, script=[(429, {"Retry-After": "1"})])
    publish(redis_client, make_event(tenant=sub.tenant))
    wait_until(lambda: len(receiver.accepted(path)) == 1, 15, "delivery after 429")
    first, second = receiver.requests(path)
    assert second.at - first.at >= 0.95  # the schedule alone would retry after about 0.2 s


def test_a_410_disables_the_subscription_and_dead_letters_the_delivery(
    webhook_worker: Service, receiver: Receiver, registry: SubscriptionRegistry, redis_client: redis.Redis
) -> None:
    sub, path = subscribe(registry, receiver, script=[410])
    gone = make_event(tenant=sub.tenant)
    publish(redis_client, gone)
    wait_until(lambda: bool(dead_letters(redis_client, gone.id)), 15, "dead letter after 410")
    (dead,) = dead_letters(redis_client, gone.id)
    assert f"endpoint answered 410 Gone; subscription {sub.id} disabled".encode() == dead[b"reason"]
    assert gone == CloudEvent.model_validate_json(dead[b"event"])
    current = registry.get(sub.id)
    assert current is not None and current.enabled is False
    assert "endpoint answered 410 Gone" == current.disabled_reason

    other, other_path = subscribe(registry, receiver)
    publish(redis_client, make_event(tenant=sub.tenant))
    publish(redis_client, make_event(tenant=other.tenant))  # handled after the one before it
    wait_until(lambda: len(receiver.accepted(other_path)) == 1, 15, "later delivery elsewhere")
    assert 1 == len(receiver.requests(path))  # nothing more was sent to the disabled endpoint


def test_a_receiver_that_never_answers_ends_in_the_dead_letter_stream_without_stalling_other_deliveries(
    webhook_worker: Service, receiver: Receiver, registry: SubscriptionRegistry, redis_client: redis.Redis
) -> None:
    stuck, stuck_path = subscribe(registry, receiver, script=["hang"] * 4)
    fine, fine_path = subscribe(registry, receiver)
    lost = make_event(tenant=stuck.tenant)
    publish(redis_client, lost)
    wait_until(lambda: len(receiver.requests(stuck_path)) == 1, 10, "first hanging attempt")
    for _ in range(10):
        publish(redis_client, make_event(tenant=fine.tenant))
    wait_until(lambda: len(receiver.accepted(fine_path)) == 10, 10, "the other deliveries")
    assert not dead_letters(redis_client, lost.id)  # still being retried while the others went through
    wait_until(lambda: bool(dead_letters(redis_client, lost.id)), 20, "dead letter after the last attempt")
    (dead,) = dead_letters(redis_client, lost.id)
    assert b"4" == dead[b"attempts"]
    assert b"gave up after 4 attempt(s); last: no answer within 1s" == dead[b"reason"]
    assert sub_id(dead) == stuck.id
    assert 4 == len(receiver.requests(stuck_path))


def sub_id(dead: dict[bytes, bytes]) -> str:
    return str(json.loads(dead[b"record"])["target"]["subscription_id"])


def test_a_jobs_callback_url_gets_the_verdict_signed_with_the_tenants_callback_secret(
    webhook_worker: Service, runner: Runner, receiver: Receiver, registry: SubscriptionRegistry, s3_client: Any
) -> None:
    tenant = f"cb{uuid.uuid4().hex[:8]}"
    path = f"/callback/{tenant}"
    receiver.route(path, secret=registry.callback_secret(tenant))
    key = f"cb/{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=images.solid())
    job = ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/{key}"), tenant=tenant, callback_url=receiver.url(path))
    event = runner.one(job)
    assert receiver.url(path).encode() == runner.queue.redis.hget(job_key(job.job_id), "callback_url")
    wait_until(lambda: len(receiver.accepted(path)) == 1, 15, "callback delivery")
    (got,) = receiver.accepted(path)
    assert event.id == got.webhook_id
    assert event == CloudEvent.model_validate_json(got.body)


def test_a_callback_url_inside_the_network_is_refused_at_send_time_and_dead_lettered(
    webhook_worker: Service, registry: SubscriptionRegistry, redis_client: redis.Redis, settings: Settings
) -> None:
    event = make_event(tenant="ssrf")
    registry.callback_secret("ssrf")
    target = DeliveryTarget(kind="callback", url="http://127.0.0.1:6379/")  # the Redis port, not allowed
    DeliveryStore(redis_client, webhook_settings(settings)).create(
        Delivery.of(event_id=event.id, event_type=event.type.value, tenant="ssrf", target=target), event.to_json()
    )
    wait_until(lambda: bool(dead_letters(redis_client, event.id)), 15, "refused delivery")
    (dead,) = dead_letters(redis_client, event.id)
    assert dead[b"reason"].startswith(b"refused: refusing to connect to '127.0.0.1'")
    assert b"1" == dead[b"attempts"]  # one attempt, refused before any connection was made


def dispatched(client: redis.Redis, stream_id: str) -> bool:
    """True once the dispatcher group has read past ``stream_id`` and acked it."""
    (group,) = [g for g in client.xinfo_groups(VERDICT_STREAM) if g["name"] == WEBHOOK_DISPATCH_GROUP.encode()]
    last = tuple(int(x) for x in group["last-delivered-id"].decode().split("-"))
    pending = client.xpending_range(VERDICT_STREAM, WEBHOOK_DISPATCH_GROUP, min=stream_id, max=stream_id, count=1)
    return last >= tuple(int(x) for x in stream_id.split("-")) and not pending


def guardq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "guardq"
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env, **WEBHOOK_ENV},
        timeout=30,
        check=False,
        cwd=ROOT,
    )


def test_the_webhooks_cli_adds_lists_tests_and_removes_a_subscription(
    webhook_worker: Service, receiver: Receiver, worker_env: dict[str, str]
) -> None:
    tenant = f"cli{uuid.uuid4().hex[:8]}"
    path = f"/cli/{tenant}"
    added = guardq("webhooks", "add", receiver.url(path), "--tenant", tenant, "--type", "completed", env=worker_env)
    assert 0 == added.returncode, added.stderr
    sub = json.loads(added.stdout)
    assert sub["secret"].startswith("whsec_")
    assert ["guardq.moderation.completed"] == sub["event_types"]
    receiver.route(path, secret=sub["secret"])

    listed = guardq("webhooks", "list", "--tenant", tenant, env=worker_env)
    assert [sub["id"]] == [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert "secret" not in listed.stdout

    ping = guardq("webhooks", "test", sub["id"], "--timeout", "15", env=worker_env)
    assert 0 == ping.returncode, ping.stderr
    assert {"state": "delivered", "attempts": "1", "last_status": "200"}.items() <= json.loads(ping.stdout).items()
    (got,) = receiver.accepted(path)
    assert "guardq.webhook.test" == json.loads(got.body)["type"]

    assert 0 == guardq("webhooks", "remove", sub["id"], env=worker_env).returncode
    assert "" == guardq("webhooks", "list", "--tenant", tenant, env=worker_env).stdout
    gone = guardq("webhooks", "remove", sub["id"], env=worker_env)
    assert 1 == gone.returncode
    assert [f"guardq: no webhook subscription {sub['id']!r}"] == gone.stderr.strip().splitlines()


def test_adding_a_subscription_to_an_internal_address_fails_in_one_line(worker_env: dict[str, str]) -> None:
    done = guardq("webhooks", "add", "http://127.0.0.1:8080/hook", env=worker_env)
    assert 2 == done.returncode
    assert ["guardq: refusing to connect to '127.0.0.1': it resolves to non-public address 127.0.0.1"] == (
        done.stderr.strip().splitlines()
    )


def test_replay_resends_stored_events_with_their_original_ids(
    webhook_worker: Service,
    receiver: Receiver,
    registry: SubscriptionRegistry,
    redis_client: redis.Redis,
    worker_env: dict[str, str],
) -> None:
    tenant = f"rp{uuid.uuid4().hex[:8]}"
    before = [make_event(tenant=tenant), make_event(tenant=tenant, failed=True)]
    sids = [publish(redis_client, event) for event in before]  # before anyone subscribed: never delivered
    wait_until(lambda: dispatched(redis_client, sids[-1]), 10, "dispatcher past the events")
    path = f"/replay/{tenant}"
    sub = registry.add(url=receiver.url(path), tenant=tenant)
    receiver.route(path, secret=sub.secret)

    done = guardq("events", "replay", "--since", "5m", "--subscription", sub.id, "--type", "completed", env=worker_env)
    assert 0 == done.returncode, done.stderr
    assert 1 == json.loads(done.stdout)["queued"]
    wait_until(lambda: len(receiver.accepted(path)) == 1, 15, "replayed delivery")

    again = guardq("events", "replay", "--since", "5m", "--subscription", sub.id, env=worker_env)
    assert 2 == json.loads(again.stdout)["queued"]
    wait_until(lambda: len(receiver.accepted(path)) == 3, 15, "second replay")
    ids = [r.webhook_id for r in receiver.accepted(path)]
    assert before[0].id == ids[0]
    assert sorted([before[0].id, before[0].id, before[1].id]) == sorted(ids)  # same ids: receivers dedupe
