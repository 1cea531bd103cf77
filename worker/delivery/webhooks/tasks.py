"""The ``guardq.webhooks.deliver`` task: one attempt of one delivery, guarded by its lease."""

from __future__ import annotations

import structlog
from celery import Task
from celery.exceptions import Reject
from redis.exceptions import RedisError

from worker.delivery.keys import TASK_DELIVER_WEBHOOK
from worker.delivery.webhooks.app import app, get_runtime

log = structlog.get_logger("guardq.webhooks")


@app.task(  # type: ignore[untyped-decorator]
    name=TASK_DELIVER_WEBHOOK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=0
)
def deliver(self: Task, delivery_id: str, lease: str) -> str:
    """Attempt one delivery; a later attempt is scheduled in Redis, never as a Celery countdown.

    If Redis fails the message is requeued; if the task is lost anyway, the lease expires and the scheduler
    sends the delivery again.
    """
    try:
        return get_runtime().deliverer.deliver(str(delivery_id), str(lease))
    except RedisError as exc:
        log.error("redis_unavailable", error=repr(exc))
        raise Reject(exc, requeue=True) from None
