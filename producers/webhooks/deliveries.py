"""Webhook deliveries in Redis and the due-time schedule that feeds the ``guardq.webhooks`` Celery queue.

A delivery is a hash (record, exact body, attempts, state, lease) plus a member of the ``guardq:webhooks:due``
sorted set scored by when it is due. Long retry delays live in that sorted set, never in Celery countdowns (a
countdown longer than the broker's visibility timeout makes Redis redeliver the task, Celery #2599/#4400).

The :class:`Scheduler` claims due deliveries with a lease: one Lua step pushes each claimed delivery's due time
forward by the lease and stamps a new lease token, then a Celery task carrying that token is sent. The task
acts only if the token is still current, so a task lost in a crash is re-sent when its lease runs out, and a stale
duplicate does nothing.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
import structlog
from celery import Celery

from schemas.keys import TASK_DELIVER_WEBHOOK, WEBHOOK_DUE, WEBHOOK_QUEUE, webhook_delivery_key
from schemas.settings import Settings
from schemas.webhooks import Delivery

log = structlog.get_logger("guardq.webhooks")

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'body', ARGV[2], 'attempts', 0, 'state', 'pending',
           'next_at', ARGV[3], 'lease', '')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return 1
"""

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i, id in ipairs(due) do
  local key = ARGV[4] .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    local lease = ARGV[5] .. ':' .. i
    redis.call('HSET', key, 'lease', lease)
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, id)
    table.insert(out, lease)
  end
end
return out
"""


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery may take before it is sent again: a queue wait plus a few request timeouts."""
    return max(300.0, settings.webhook_timeout_s * 4)


class DeliveryStore:
    """Create deliveries (idempotently), read their state, claim due ones."""

    def __init__(self, client: redis.Redis[bytes], settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)

    def create(self, delivery: Delivery, body: bytes | str, *, due: float | None = None, pipe: Any = None) -> Any:
        """Store ``delivery`` due now (or at ``due``) unless it exists already; returns 1 if created, 0 if not.

        With ``pipe`` (a Redis pipeline) the step is queued there and the pipeline's result holds the answer.
        """
        args = [
            delivery.model_dump_json(),
            body,
            due if due is not None else time.time(),
            self.settings.webhook_record_ttl_s,
            delivery.delivery_id,
        ]
        keys = [webhook_delivery_key(delivery.delivery_id), WEBHOOK_DUE]
        return (
            self._create(keys=keys, args=args, client=pipe) if pipe is not None else self._create(keys=keys, args=args)
        )

    def status(self, delivery_id: str) -> dict[str, str] | None:
        """A delivery's state fields (record JSON, state, attempts, last status/error...), without the body."""
        raw = self.redis.hgetall(webhook_delivery_key(delivery_id))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items() if k not in {b"body", b"lease"}}

    def claim_due(self, limit: int, *, now: float | None = None) -> list[tuple[str, str]]:
        """Lease up to ``limit`` due deliveries; returns ``(delivery id, lease token)`` pairs."""
        at = time.time() if now is None else now
        args = [at, limit, at + lease_seconds(self.settings), webhook_delivery_key(""), uuid.uuid4().hex]
        flat = [v.decode() if isinstance(v, bytes) else str(v) for v in self._claim(keys=[WEBHOOK_DUE], args=args)]
        return list(zip(flat[::2], flat[1::2], strict=True))

    def backlog(self) -> int:
        """Deliveries waiting in the schedule (due or not)."""
        return int(self.redis.zcard(WEBHOOK_DUE))


class Scheduler:
    """Moves due deliveries onto the Celery queue, keeping that queue short (bounded by a high-water mark)."""

    def __init__(self, store: DeliveryStore, celery: Celery, *, high_water: int) -> None:
        self.store = store
        self.celery = celery
        self.high_water = high_water

    def tick(self) -> int:
        """Send every due delivery the queue has room for; return how many were sent."""
        room = self.high_water - int(self.store.redis.llen(WEBHOOK_QUEUE))
        if room <= 0:
            return 0
        claimed = self.store.claim_due(room)
        for delivery_id, lease in claimed:
            self.celery.send_task(TASK_DELIVER_WEBHOOK, args=[delivery_id, lease], queue=WEBHOOK_QUEUE)
        return len(claimed)
