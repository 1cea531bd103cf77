"""Webhook deliveries in Redis: the delivery hashes, the due-time schedule and the dead-letter stream.

A delivery is a hash (``schemas.records.DeliveryField``: record, exact body, attempts, state, lease) plus a member
of the ``guardq:webhooks:due`` sorted set scored by when it is due. Long retry delays live in that sorted set,
never in Celery countdowns (a countdown longer than the broker's visibility timeout makes Redis redeliver the task,
Celery #2599/#4400). This module is the one writer of all three keys; every change is one Lua step beside it:

- ``deliveries_create.lua``: a delivery is created once (its id is deterministic) and put on the schedule;
- ``deliveries_claim.lua``: the scheduler claims due deliveries with a lease, pushing each one's due time forward
  by the lease and stamping a new lease token (a Celery task carrying that token is then sent);
- ``deliveries_settle.lua``: an attempt's outcome (delivered, retry at a time, dead-lettered with the reason),
  applied only if the caller still holds the lease, so a stale duplicate task can never settle or resend it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import redis

from schemas.records import DELIVERY_PRIVATE_FIELDS, DeliveryField, DeliveryRecord
from schemas.settings import Settings
from schemas.webhooks import Delivery, DeliveryState
from worker.delivery.keys import WEBHOOK_DLQ_STREAM, WEBHOOK_DUE, webhook_delivery_key


def _lua(name: str) -> str:
    return Path(__file__).with_name(f"deliveries_{name}.lua").read_text()


_CREATE, _CLAIM, _SETTLE = _lua("create"), _lua("claim"), _lua("settle")
# What one attempt reads of its delivery (the deliverer): never the whole hash.
_ATTEMPT_FIELDS = [
    DeliveryField.LEASE,
    DeliveryField.STATE,
    DeliveryField.ATTEMPTS,
    DeliveryField.RECORD,
    DeliveryField.BODY,
]


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery may take before it is sent again: a queue wait plus a few request timeouts."""
    return max(300.0, settings.webhook_timeout_s * 4)


class DeliveryStore:
    """Create deliveries (idempotently), read their state, claim due ones, settle attempts."""

    def __init__(self, client: redis.Redis[bytes], settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)

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
        private = {f.encode() for f in DELIVERY_PRIVATE_FIELDS}
        return {k.decode(): v.decode() for k, v in raw.items() if k not in private}

    def for_attempt(self, delivery_id: str) -> DeliveryRecord | None:
        """What an attempt needs (lease, state, attempts, record, body); None when the record or body is gone."""
        values = self.redis.hmget(webhook_delivery_key(delivery_id), _ATTEMPT_FIELDS)
        found = DeliveryRecord.from_hash({f.encode(): v for f, v in zip(_ATTEMPT_FIELDS, values, strict=True)})
        return found if found is not None and found.body is not None else None

    def claim_due(self, limit: int, *, now: float | None = None) -> list[tuple[str, str]]:
        """Lease up to ``limit`` due deliveries; returns ``(delivery id, lease token)`` pairs."""
        at = time.time() if now is None else now
        args = [at, limit, at + lease_seconds(self.settings), webhook_delivery_key(""), uuid.uuid4().hex]
        flat = [v.decode() if isinstance(v, bytes) else str(v) for v in self._claim(keys=[WEBHOOK_DUE], args=args)]
        return list(zip(flat[::2], flat[1::2], strict=True))

    def settle(
        self,
        delivery_id: str,
        lease: str,
        state: DeliveryState,
        *,
        attempts: int,
        status: str,
        message: str,
        at: str,
        next_at: float = 0.0,
    ) -> bool:
        """Apply an attempt's outcome if ``lease`` is still current: pending again (due at ``next_at``), delivered,
        or dead (the reason is ``message``; copied with the body to ``guardq:webhooks.dlq``). False when stale."""
        args = [lease, state.value, attempts, status, message, at, next_at, delivery_id, self.settings.dlq_maxlen]
        keys = [webhook_delivery_key(delivery_id), WEBHOOK_DUE, WEBHOOK_DLQ_STREAM]
        return bool(self._settle(keys=keys, args=args))

    def unschedule(self, delivery_id: str) -> None:
        """Take a delivery that is no longer pending off the schedule."""
        self.redis.zrem(WEBHOOK_DUE, delivery_id)

    def backlog(self) -> int:
        """Deliveries waiting in the schedule (due or not)."""
        return int(self.redis.zcard(WEBHOOK_DUE))
