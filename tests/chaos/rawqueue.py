"""Put malformed messages on a guardq queue the ways a buggy or hostile producer could, bypassing ``JobQueue``.

Three depths: a raw list entry (what kombu's Redis transport ``LPUSH``es, here not even JSON); a kombu message with
any body bytes, content type and headers (published through kombu, so the envelope is well formed); a Celery task
message whose arguments are anything at all.
"""

from __future__ import annotations

import uuid
from typing import Any

from producers.broker import JobQueue
from schemas.keys import TASK_MODERATE

QUEUE = "guardq.llavaguard-7b"


def push_entry(queue: JobQueue, entry: bytes, *, name: str = QUEUE) -> None:
    """LPUSH ``entry`` into the queue's Redis list, exactly where kombu puts its JSON envelopes."""
    queue.redis.lpush(name, entry)


def task_headers(task_id: str, task: str = TASK_MODERATE) -> dict[str, Any]:
    """Celery protocol 2 headers for ``task`` with id ``task_id``."""
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "chaos-test",
    }


def publish_message(
    queue: JobQueue,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
    name: str = QUEUE,
) -> None:
    """Publish ``body`` verbatim (no serializer) as a kombu message with the given content type and headers."""
    with queue.celery.producer_or_acquire() as producer:
        producer.publish(
            body,
            routing_key=name,
            exchange="",
            content_type=content_type,
            content_encoding="utf-8" if content_type == "application/json" else "binary",
            headers=headers or {},
            declare=[],
        )


def send_args(queue: JobQueue, args: list[Any], kwargs: dict[str, Any] | None = None, task_id: str = "") -> str:
    """Send ``guardq.moderate`` with arbitrary arguments; return the task id."""
    task_id = task_id or f"raw-{uuid.uuid4().hex}"
    queue.celery.send_task(TASK_MODERATE, args=args, kwargs=kwargs or {}, queue=QUEUE, task_id=task_id)
    return task_id
