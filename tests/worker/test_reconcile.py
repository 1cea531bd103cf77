"""The reconciler re-sends jobs the broker lost, and only those (real Redis, no worker consuming the queues)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib

from producers.broker import JobQueue
from schemas.job import ImageRef, ModerationJob
from schemas.keys import OPEN_JOBS, job_key, terminal_guard_key
from schemas.settings import Settings
from worker.reconcile import Reconciler

pytestmark = pytest.mark.integration
Sent = list[tuple[dict[str, Any], str, str]]


@pytest.fixture
def queue_name() -> str:
    return f"guardq.reconcile-test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def producer(settings: Settings) -> Iterator[JobQueue]:
    queue = JobQueue(settings)
    yield queue
    queue.close()


def a_job() -> ModerationJob:
    return ModerationJob(image=ImageRef.parse(f"s3://bucket-x/{uuid.uuid4().hex}.jpg"))


def reconciler(client: redis_lib.Redis, sent: Sent) -> Reconciler:
    """A reconciler with private lock and suspect keys (the shared test worker runs its own)."""
    tag = uuid.uuid4().hex[:8]
    return Reconciler(
        client, lambda message, queue, job_id: sent.append((message, queue, job_id)), node="test", grace_s=10,
        lock_key=f"test:reconcile:lock:{tag}", suspects_key=f"test:reconcile:suspects:{tag}",
    )  # fmt: skip


def mine(sent: Sent, *jobs: ModerationJob) -> Sent:
    ids = {j.job_id for j in jobs}
    return [item for item in sent if item[2] in ids]  # the open-jobs index is shared by every test


def test_a_job_whose_message_vanished_is_sent_again_once_it_was_missing_for_a_whole_interval(
    producer: JobQueue, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    lost, waiting = a_job(), a_job()
    producer.send(lost, queue=queue_name)
    producer.send(waiting, queue=queue_name)
    # The broker loses the first message (a worker killed, or Redis crashing, between BRPOP and kombu's bookkeeping).
    raw = redis_client.rpop(queue_name)
    assert raw is not None and lost.job_id == json.loads(raw)["headers"]["id"]
    sent: Sent = []
    sweeper = reconciler(redis_client, sent)
    try:
        sweeper.sweep(now=1000.0)  # first sighting: a suspect, not yet re-sent
        assert [] == mine(sent, lost, waiting)
        sweeper.sweep(now=1005.0)  # still within the grace
        assert [] == mine(sent, lost, waiting)
        sweeper.sweep(now=1010.0)
        assert [(lost.to_message(), queue_name, lost.job_id)] == mine(sent, lost, waiting)
        assert b"1" == redis_client.hget(job_key(lost.job_id), "reconciled")
    finally:
        redis_client.zrem(OPEN_JOBS, lost.job_id, waiting.job_id)


def test_a_message_seen_missing_only_once_is_not_resent(
    producer: JobQueue, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    """A message between BRPOP and its bookkeeping is missing for a moment: it must not be taken for lost."""
    job = a_job()
    producer.send(job, queue=queue_name)
    raw = redis_client.rpop(queue_name)
    assert raw is not None
    sent: Sent = []
    sweeper = reconciler(redis_client, sent)
    try:
        sweeper.sweep(now=2000.0)
        redis_client.lpush(queue_name, raw)  # the "worker" put it back (or recorded it) before the next sweep
        sweeper.sweep(now=2020.0)
        assert [] == mine(sent, job)
    finally:
        redis_client.zrem(OPEN_JOBS, job.job_id)
        redis_client.delete(queue_name)


def test_finished_jobs_leave_the_index_and_reserved_ones_are_left_alone(
    producer: JobQueue, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    finished, reserved = a_job(), a_job()
    producer.send(finished, queue=queue_name)
    producer.send(reserved, queue=queue_name)
    redis_client.delete(queue_name)
    redis_client.set(terminal_guard_key(finished.job_id), "1-0", ex=60)
    envelope = {"headers": {"id": reserved.job_id}, "properties": {"delivery_tag": "t"}}
    redis_client.hset("unacked", f"tag-{reserved.job_id}", json.dumps([envelope, "", queue_name]))
    sent: Sent = []
    sweeper = reconciler(redis_client, sent)
    try:
        sweeper.sweep(now=3000.0)
        sweeper.sweep(now=3100.0)
        assert [] == mine(sent, finished, reserved)
        assert redis_client.zscore(OPEN_JOBS, finished.job_id) is None
        assert redis_client.zscore(OPEN_JOBS, reserved.job_id) is not None
    finally:
        redis_client.hdel("unacked", f"tag-{reserved.job_id}")
        redis_client.zrem(OPEN_JOBS, reserved.job_id)
