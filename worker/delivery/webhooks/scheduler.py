"""The scheduler of ``guardq webhooks worker``: moves due deliveries onto the ``guardq.webhooks`` Celery queue.

It claims due deliveries with a lease (:meth:`DeliveryStore.claim_due`) and sends one
``guardq.webhooks.deliver(delivery_id, lease)`` task per claim, immediately (no countdown). The task acts only if
the lease is still current, so a task lost in a crash is re-sent when its lease runs out, and a stale duplicate does
nothing. It keeps the queue short: at most ``high_water`` tasks wait there.
"""

from __future__ import annotations

from celery import Celery

from worker.delivery.keys import TASK_DELIVER_WEBHOOK, WEBHOOK_QUEUE
from worker.delivery.webhooks.deliveries import DeliveryStore


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
