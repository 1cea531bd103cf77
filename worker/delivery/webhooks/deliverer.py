"""One delivery attempt and what follows it: delivered, retried later, or dead-lettered with the reason.

Status handling (Standard Webhooks): 2xx is success; anything else, a timeout or a connection error is a
failure retried on the schedule ``GUARDQ_WEBHOOK_RETRY_SCHEDULE_S`` (each delay scaled by 1 ± jitter, a
``Retry-After`` on 429/502/503/504 honoured up to ``GUARDQ_WEBHOOK_RETRY_AFTER_MAX_S``); 410 Gone disables the
subscription; a target the SSRF guard refuses is not retried. After the last attempt the delivery goes to the
dead-letter stream ``guardq:webhooks.dlq`` with the event, the target and the reason.

Every state change goes through the delivery store (``deliveries.py``), in one Lua step that first checks the
caller still holds the delivery's lease, so a stale duplicate task can never settle (or resend) a delivery someone
else owns; a subscription is disabled through its registry (``registry.py``).
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import redis
import structlog

from schemas.settings import Settings
from schemas.webhooks import Delivery, DeliveryState, Subscription
from worker.delivery.webhooks.deliveries import DeliveryStore
from worker.delivery.webhooks.registry import SubscriptionRegistry
from worker.delivery.webhooks.sender import SendResult, WebhookSender

log = structlog.get_logger("guardq.webhooks")
_THROTTLE = {429, 502, 503, 504}


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
        self.store = DeliveryStore(client, settings)
        self.registry = SubscriptionRegistry(client, settings)

    def deliver(self, delivery_id: str, lease: str) -> str:
        """Make one attempt if ``lease`` is current; return what happened (for logs and tests)."""
        held = self.store.for_attempt(delivery_id)
        if held is None or held.body is None:
            return "missing"
        if held.lease != lease:
            return "stale"
        record, attempts, body = held.delivery(), held.attempts, held.body
        if held.state != DeliveryState.PENDING:
            self.store.unschedule(delivery_id)
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
            secret = self.registry.stored_callback_secret(record.tenant)
            if secret is None:
                return None, None, None, f"no callback secret for tenant {record.tenant!r}"
            return record.target.url, secret, None, None
        subscription = self.registry.get(record.target.subscription_id or "")
        if subscription is None:
            return None, None, None, f"subscription {record.target.subscription_id} was removed"
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
        settled = self.store.settle(
            record.delivery_id,
            lease,
            state,
            attempts=attempts,
            status=status,
            message=message[:500],
            at=now,
            next_at=next_at,
        )
        if not settled:
            return "stale"
        if state is DeliveryState.DEAD:
            log.warning(
                "webhook_dead_lettered", delivery_id=record.delivery_id, event_id=record.event_id, reason=message
            )
        return state.value

    def _disable_subscription(self, subscription: Subscription, reason: str) -> None:
        self.registry.disable(subscription, reason)
        log.warning("webhook_subscription_disabled", subscription_id=subscription.id, reason=reason)
