"""Fan-out: turn each verdict event on the stream into webhook deliveries, crash-safely (an outbox on the bus).

The dispatcher is a consumer group (``guardq.webhooks``) on ``guardq:verdicts``. For each event it creates one
delivery per matching subscription (same tenant, type in the subscription's filter) and one for the job's own
``callback_url`` (which the worker records in the job hash in the same atomic step as the XADD), then acks the
entry. Delivery ids are derived from (event id, target), so an entry delivered twice (a crash before the ack,
a reclaim by another dispatcher) creates nothing new. Nothing is lost between XADD and enqueue: until the ack,
the entry stays in the group's pending list and is fanned out again.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import redis
import structlog

from schemas.keys import job_key
from schemas.records import JobField
from schemas.webhooks import Delivery, DeliveryTarget, Subscription
from worker.delivery.keys import WEBHOOK_DISPATCH_GROUP
from worker.delivery.stream.consumer import Entry, StreamConsumer
from worker.delivery.webhooks.deliveries import DeliveryStore
from worker.delivery.webhooks.registry import SubscriptionRegistry, ensure_dispatch_group

log = structlog.get_logger("guardq.webhooks")


def targets_for(entry: Entry, subscriptions: list[Subscription], callback_url: str | None) -> list[DeliveryTarget]:
    """Where one event goes: every subscription that wants it, plus the job's callback URL if it had one."""
    assert entry.event is not None
    tenant, kind = entry.event.data.tenant, entry.event.type.value
    out = [
        DeliveryTarget(kind="subscription", url=s.url, subscription_id=s.id)
        for s in subscriptions
        if s.wants(tenant, kind)
    ]
    if callback_url:
        out.append(DeliveryTarget(kind="callback", url=callback_url))
    return out


class Dispatcher:
    """One dispatcher consumer; run several (different names) for throughput or availability."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        registry: SubscriptionRegistry,
        store: DeliveryStore,
        *,
        consumer: str | None = None,
        on_created: Callable[[int], None] = lambda n: None,
        batch: int = 200,
        block_ms: int = 500,
        min_idle_ms: int = 30_000,
    ) -> None:
        self.redis = client
        self.registry = registry
        self.store = store
        self.on_created = on_created
        self.reader = StreamConsumer(
            client,
            group=WEBHOOK_DISPATCH_GROUP,
            consumer=consumer or f"dispatch-{socket.gethostname()}",
            batch=batch,
            block_ms=block_ms,
            min_idle_ms=min_idle_ms,
            max_deliveries=20,
            dlq_maxlen=registry.settings.dlq_maxlen,
        )

    def start(self) -> None:
        ensure_dispatch_group(self.redis)
        self.reader.ensure_group()

    def step(self, block_ms: int | None = None) -> int:
        """Fan out one batch of events and ack it; return how many deliveries were created."""
        entries = self.reader.read(block_ms=block_ms)
        if not entries:
            return 0
        subscriptions = [s for s in self.registry.all() if s.enabled]
        lookup = self.redis.pipeline(transaction=False)
        for entry in entries:
            assert entry.event is not None
            lookup.hget(job_key(entry.event.data.job_id), JobField.CALLBACK_URL)
        callbacks = lookup.execute()
        tenants_with_callbacks = set()
        write = self.redis.pipeline(transaction=False)
        for entry, raw_url in zip(entries, callbacks, strict=True):
            assert entry.event is not None
            url = raw_url.decode() if raw_url else None
            if url:
                tenants_with_callbacks.add(entry.event.data.tenant)
            for target in targets_for(entry, subscriptions, url):
                delivery = Delivery.of(
                    event_id=entry.event.id,
                    event_type=entry.event.type.value,
                    tenant=entry.event.data.tenant,
                    target=target,
                )
                self.store.create(delivery, entry.raw, pipe=write)
        for tenant in tenants_with_callbacks:
            self.registry.callback_secret(tenant)  # created on first use; the worker signs with it
        created = sum(int(r) for r in write.execute())
        self.reader.ack(*(e.id for e in entries))
        if created:
            self.on_created(created)
            log.info("deliveries_created", events=len(entries), deliveries=created)
        return created
