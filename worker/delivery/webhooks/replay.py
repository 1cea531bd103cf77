"""Re-send stored events to a webhook subscription (replay), and send it a test ping.

A replay reads the verdict stream from ``since`` (stream ids start with the unix milliseconds of the XADD) and
creates a new delivery per matching event, with the **same** ``webhook-id`` (the event id), so a receiver that
already has an event dedupes it. Only events still on the stream can be replayed (it is capped by
``GUARDQ_STREAM_MAXLEN``). Library functions, called by ``guardq events replay`` and by the HTTP API.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.events import STREAM_FIELD, CloudEvent
from schemas.keys import VERDICT_STREAM
from schemas.records import DeliveryField
from schemas.settings import Settings
from schemas.webhooks import (
    TEST_EVENT_TYPE,
    Delivery,
    DeliveryState,
    DeliveryTarget,
    Subscription,
    normalize_event_types,
)
from worker.delivery.webhooks.deliveries import DeliveryStore
from worker.delivery.webhooks.registry import SubscriptionRegistry

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``2026-05-01T12:00:00Z`` (naive means UTC), unix seconds, or an age such as ``90s``, ``15m``, ``2h``, ``3d``."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(relative[1]) * _UNITS[relative[2]])
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return datetime.fromtimestamp(float(value), UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PermanentError(
            f"cannot read time {text!r}: use ISO 8601, unix seconds or an age like 2h", code=ErrorCode.INVALID_JOB
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ReplayResult:
    replay_id: str
    subscription_id: str
    scanned: int
    queued: int


def _target(sub: Subscription) -> DeliveryTarget:
    return DeliveryTarget(kind="subscription", url=sub.url, subscription_id=sub.id)


def _subscription(registry: SubscriptionRegistry, subscription_id: str) -> Subscription:
    sub = registry.get(subscription_id)
    if sub is None:
        raise PermanentError(f"no webhook subscription {subscription_id!r}", code=ErrorCode.NOT_FOUND)
    if not sub.enabled:
        raise PermanentError(
            f"subscription {subscription_id} is disabled ({sub.disabled_reason}); enable it first",
            code=ErrorCode.INVALID_JOB,
        )
    return sub


def replay_events(
    client: redis.Redis[bytes],
    settings: Settings,
    subscription_id: str,
    *,
    since: datetime,
    until: datetime | None = None,
    types: list[str] | None = None,
    limit: int | None = None,
    stream: str = VERDICT_STREAM,
) -> ReplayResult:
    """Queue the subscription's events published in ``[since, until]`` for delivery again (same event ids).

    ``types`` narrows the subscription's own filter; the subscription's tenant always applies.
    """
    sub = _subscription(SubscriptionRegistry(client, settings), subscription_id)
    store = DeliveryStore(client, settings)
    wanted = normalize_event_types(types or []) or sub.event_types
    replay_id = uuid.uuid4().hex[:16]
    since = since if since.tzinfo else since.replace(tzinfo=UTC)  # naive times are UTC
    until = until if until is None or until.tzinfo else until.replace(tzinfo=UTC)
    cursor = f"{int(since.timestamp() * 1000)}-0"
    end = f"{int(until.timestamp() * 1000)}-18446744073709551615" if until else "+"
    scanned = queued = 0
    while limit is None or queued < limit:
        page = client.xrange(stream, min=cursor, max=end, count=500)
        if not page:
            break
        pipe = client.pipeline(transaction=False)
        for _, fields in page:
            scanned += 1
            raw = fields.get(STREAM_FIELD.encode())
            try:
                event = CloudEvent.model_validate_json(raw or b"")
            except ValidationError:
                continue
            if event.data.tenant != sub.tenant or (wanted and event.type.value not in wanted):
                continue
            if limit is not None and queued >= limit:
                break
            delivery = Delivery.of(
                event_id=event.id,
                event_type=event.type.value,
                tenant=event.data.tenant,
                target=_target(sub),
                replay_id=replay_id,
            )
            store.create(delivery, raw or b"", pipe=pipe)
            queued += 1
        pipe.execute()
        last = page[-1][0]
        cursor = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    return ReplayResult(replay_id, sub.id, scanned, queued)


def queue_test_delivery(client: redis.Redis[bytes], settings: Settings, subscription_id: str) -> str:
    """Queue one signed ``guardq.webhook.test`` ping (a single attempt) to the subscription; return its delivery id."""
    sub = _subscription(SubscriptionRegistry(client, settings), subscription_id)
    event_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": settings.event_source,
            "type": TEST_EVENT_TYPE,
            "subject": sub.id,
            "time": datetime.now(UTC).isoformat(),
            "tenant": sub.tenant,
            "data": {"subscription_id": sub.id, "message": "guardq webhook test"},
        },
        separators=(",", ":"),
    )
    delivery = Delivery.of(
        event_id=event_id, event_type=TEST_EVENT_TYPE, tenant=sub.tenant, target=_target(sub), max_attempts=1
    )
    DeliveryStore(client, settings).create(delivery, body)
    return delivery.delivery_id


def wait_settled(store: DeliveryStore, delivery_id: str, timeout_s: float) -> dict[str, str] | None:
    """Poll a delivery until it is delivered or dead, or ``timeout_s`` passes; return its last known status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = store.status(delivery_id)
        if status is None or status.get(DeliveryField.STATE) != DeliveryState.PENDING or time.monotonic() >= deadline:
            return status
        time.sleep(0.1)
