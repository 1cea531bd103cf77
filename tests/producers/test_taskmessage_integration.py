"""Producers write Celery's messages straight into Redis (many per transaction): those entries must be exactly what
Celery's own ``send_task`` writes, so a Celery/kombu upgrade that changes the layout fails here first."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis as redis_lib

from producers.broker import JobQueue
from producers.taskmessage import redis_entry
from schemas.job import ImageRef, ModerationJob
from schemas.keys import TASK_MODERATE

pytestmark = pytest.mark.integration


def decoded(raw: bytes) -> dict[str, Any]:
    entry = json.loads(raw)
    entry["body"] = json.loads(base64.b64decode(entry["body"]))
    return dict(entry)


def test_a_batched_entry_is_byte_for_byte_celerys_own_except_for_its_delivery_tag(
    job_queue: JobQueue, redis_client: redis_lib.Redis, private_queue: str
) -> None:
    job = ModerationJob(image=ImageRef.parse("s3://guardq-test/a/b.jpg"), metadata={"post": "p1"})
    message = job.to_message()
    argsrepr = f"[{job.image}]"
    job_queue.celery.send_task(
        TASK_MODERATE, args=[message], queue=private_queue, task_id=job.job_id, argsrepr=argsrepr, kwargsrepr="{}"
    )
    celerys = redis_client.rpop(private_queue)
    assert celerys is not None
    ours = redis_entry(job_queue.celery, task_id=job.job_id, args=[message], queue=private_queue, argsrepr=argsrepr)

    theirs_d, ours_d = decoded(celerys), decoded(ours)
    assert theirs_d["properties"].pop("delivery_tag") != ours_d["properties"].pop("delivery_tag")
    assert theirs_d == ours_d
    assert json.loads(celerys)["body"] == json.loads(ours)["body"]  # same serialized body, not only equal JSON
    assert ours_d["properties"]["delivery_info"] == {"exchange": "", "routing_key": private_queue}


def test_send_many_puts_every_message_on_the_jobs_queue_in_order(
    job_queue: JobQueue, redis_client: redis_lib.Redis, private_queue: str
) -> None:
    jobs = [ModerationJob(image=ImageRef.parse(f"s3://guardq-test/order/{i}.jpg")) for i in range(30)]
    assert [j.job_id for j in jobs] == job_queue.send_many(jobs, queue=private_queue)
    popped = [decoded(raw) for raw in reversed(redis_client.lrange(private_queue, 0, -1))]
    assert [j.job_id for j in jobs] == [m["headers"]["id"] for m in popped]
    assert [j.to_message() for j in jobs] == [m["body"][0][0] for m in popped]
