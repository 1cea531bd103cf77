"""One delivery attempt and what follows it: delivered, retried later, or dead-lettered with the reason.

Status handling (Standard Webhooks): 2xx is success; anything else, a timeout or a connection error is a
failure retried on the schedule ``GUARDQ_WEBHOOK_RETRY_SCHEDULE_S`` (each delay scaled by 1 ± jitter, a
``Retry-After`` on 429/502/503/504 honoured up to ``GUARDQ_WEBHOOK_RETRY_AFTER_MAX_S``); 410 Gone disables the
subscription; a target the SSRF guard refuses is not retried. After the last attempt the delivery goes to the
dead-letter stream ``guardq:webhooks.dlq`` with the event, the target and the reason.

Every state change is one Lua step that first checks the caller still holds the delivery's lease, so a stale
duplicate task can never settle (or resend) a delivery someone else owns.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import redis
import structlog

from schemas.keys import WEBHOOK_DLQ_STREAM, WEBHOOK_DUE, WEBHOOK_SUBSCRIPTIONS, callback_secret_key
from schemas.keys import webhook_delivery_key as delivery_key
from schemas.settings import Settings
from schemas.webhooks import Delivery, DeliveryState, Subscription
from worker.webhooks.sender import SendResult, WebhookSender

log = structlog.get_logger("guardq.webhooks")
_THROTTLE = {429, 502, 503, 504}

_SETTLE = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease', '', 'state', ARGV[2], 'attempts', ARGV[3], 'last_status', ARGV[4],
           'last_error', ARGV[5], 'updated_at', ARGV[6])
if ARGV[2] == 'pending' then
  redis.call('HSET', KEYS[1], 'next_at', ARGV[7])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[8])
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[8])
if ARGV[2] == 'dead' then
  redis.call('HSET', KEYS[1], 'reason', ARGV[5])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'delivery_id', ARGV[8], 'reason', ARGV[5],
             'attempts', ARGV[3], 'last_status', ARGV[4], 'failed_at', ARGV[6], 'record', redis.call('HGET', KEYS[1], 'record'),
             'event', redis.call('HGET', KEYS[1], 'body'))
end
return 1
"""

_DISABLE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""


def retry_delay_s(attempts_done: int, settings: Settings, *, retry_after: float | None = None) -> float | None:
    """Seconds to wait before the next attempt after ``attempts_done`` failed ones; None once the schedule is spent."""
    schedule = settings.webhook_retry_schedule_s
    if attempts_done > len(schedule):
        return None
    base = schedule[attempts_done - 1]
    delay = base * random.uniform(1 - settings.webhook_jitter, 1 + settings.webhook_jitter)  # noqa: S311 - jitter
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.webhook_retry_after_max_s))
    return round(delay, 3)


class Deliverer:
    """Runs delivery attempts for the ``guardq.webhooks.deliver`` task; one per webhook worker process."""

    def __init__(self, client: redis.Redis[bytes], sender: WebhookSender, settings: Settings) -> None:
        self.redis = client
        self.sender = sender
        self.settings = settings
        self._settle = client.register_script(_SETTLE)
        self._disable = client.register_script(_DISABLE)

    def deliver(self, delivery_id: str, lease: str) -> str:
        """Make one attempt if ``lease`` is current; return what happened (for logs and tests)."""
        fields = self.redis.hmget(delivery_key(delivery_id), ["lease", "state", "attempts", "record", "body"])
        current, state, attempts_raw, record_raw, body = fields
        if record_raw is None or body is None:
            return "missing"
        if (current or b"").decode() != lease:
            return "stale"
        record = Delivery.model_validate_json(record_raw)
        attempts = int(attempts_raw or 0)
        if (state or b"").decode() != DeliveryState.PENDING:
            self.redis.zrem(WEBHOOK_DUE, delivery_id)
            return "settled"
        url, secret, subscription, refusal = self._target(record)
        if refusal is not None:
            return self._finish(record, lease, DeliveryState.DEAD, attempts, "", refusal)
        assert url is not None and secret is not None
        result = self.sender.send(url, msg_id=record.event_id, body=body, secret=secret)
        attempts += 1
        log.info(
            "webhook_attempt",
            delivery_id=delivery_id,
            event_id=record.event_id,
            url=url,
            attempt=attempts,
            status=result.status,
            error=result.error,
        )
        return self._after(record, lease, attempts, result, subscription)

    def _target(self, record: Delivery) -> tuple[str | None, str | None, Subscription | None, str | None]:
        """``(url, secret, subscription, None)`` or ``(..., refusal reason)`` when the delivery cannot go out."""
        if record.target.kind == "callback":
            secret = self.redis.get(callback_secret_key(record.tenant))
            if secret is None:
                return None, None, None, f"no callback secret for tenant {record.tenant!r}"
            return record.target.url, secret.decode(), None, None
        raw = self.redis.hget(WEBHOOK_SUBSCRIPTIONS, record.target.subscription_id or "")
        if raw is None:
            return None, None, None, f"subscription {record.target.subscription_id} was removed"
        subscription = Subscription.model_validate_json(raw)
        if not subscription.enabled:
            reason = subscription.disabled_reason or "disabled"
            return None, None, subscription, f"subscription {subscription.id} is disabled ({reason})"
        return subscription.url, subscription.secret, subscription, None

    def _after(
        self, record: Delivery, lease: str, attempts: int, result: SendResult, subscription: Subscription | None
    ) -> str:
        status = "" if result.status is None else str(result.status)
        if result.ok:
            return self._finish(record, lease, DeliveryState.DELIVERED, attempts, status, "")
        if result.status == 410:
            reason = "endpoint answered 410 Gone"
            if subscription is not None:
                self._disable_subscription(subscription, reason)
                reason += f"; subscription {subscription.id} disabled"
            return self._finish(record, lease, DeliveryState.DEAD, attempts, status, reason)
        if result.permanent:
            return self._finish(record, lease, DeliveryState.DEAD, attempts, status, f"refused: {result.error}")
        honoured = result.retry_after if result.status in _THROTTLE else None
        delay = (
            None
            if self._last_attempt(record, attempts)
            else retry_delay_s(attempts, self.settings, retry_after=honoured)
        )
        if delay is None:
            reason = f"gave up after {attempts} attempt(s); last: {result.describe()}"
            return self._finish(record, lease, DeliveryState.DEAD, attempts, status, reason)
        return self._finish(
            record, lease, DeliveryState.PENDING, attempts, status, result.describe(), next_at=time.time() + delay
        )

    def _last_attempt(self, record: Delivery, attempts: int) -> bool:
        return record.max_attempts is not None and attempts >= record.max_attempts

    def _finish(
        self,
        record: Delivery,
        lease: str,
        state: DeliveryState,
        attempts: int,
        status: str,
        message: str,
        *,
        next_at: float = 0.0,
    ) -> str:
        now = datetime.now(UTC).isoformat()
        args = [
            lease,
            state.value,
            attempts,
            status,
            message[:500],
            now,
            next_at,
            record.delivery_id,
            self.settings.dlq_maxlen,
        ]
        keys = [delivery_key(record.delivery_id), WEBHOOK_DUE, WEBHOOK_DLQ_STREAM]
        if not self._settle(keys=keys, args=args):
            return "stale"
        if state is DeliveryState.DEAD:
            log.warning(
                "webhook_dead_lettered", delivery_id=record.delivery_id, event_id=record.event_id, reason=message
            )
        return state.value

    def _disable_subscription(self, subscription: Subscription, reason: str) -> None:
        updated = subscription.model_copy(update={"enabled": False, "disabled_reason": reason})
        self._disable(keys=[WEBHOOK_SUBSCRIPTIONS], args=[subscription.id, updated.model_dump_json()])
        log.warning("webhook_subscription_disabled", subscription_id=subscription.id, reason=reason)
