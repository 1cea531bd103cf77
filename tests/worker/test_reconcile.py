"""The reconciler re-sends jobs the broker lost, and only those (real Redis, no worker consuming the queue)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis as redis_lib

from producers.broker import JobQueue
from schemas.job import ImageRef, ModerationJob
from schemas.keys import OPEN_JOBS, RECONCILE_RUN_ID, job_key, terminal_guard_key
from schemas.settings import Settings
from worker.reconcile import Reconciler

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_name() -> str:
    return f"guardq.reconcile-test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def producer(settings: Settings) -> Any:
    queue = JobQueue(settings)
    yield queue
    queue.close()


def a_job() -> ModerationJob:
    return ModerationJob(image=ImageRef.parse(f"s3://bucket-x/{uuid.uuid4().hex}.jpg"))


def reconciler(client: redis_lib.Redis, sent: list[tuple[dict[str, Any], str, str]]) -> Reconciler:
    return Reconciler(client, lambda message, queue, job_id: sent.append((message, queue, job_id)), node="test")


def test_a_job_whose_message_vanished_from_the_broker_is_sent_again_with_its_id(
    producer: JobQueue, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    lost, waiting = a_job(), a_job()
    producer.send(lost, queue=queue_name)
    producer.send(waiting, queue=queue_name)
    # The broker loses the first message (as a Redis crash between BRPOP and kombu's bookkeeping does).
    raw = redis_client.rpop(queue_name)
    assert raw is not None and lost.job_id == json.loads(raw)["headers"]["id"]
    sent: list[tuple[dict[str, Any], str, str]] = []
    reconciler(redis_client, sent).sweep()
    mine = [item for item in sent if item[2] in {lost.job_id, waiting.job_id}]  # the index is shared by all tests
    assert [(lost.to_message(), queue_name, lost.job_id)] == mine
    assert b"1" == redis_client.hget(job_key(lost.job_id), "reconciled")
    redis_client.zrem(OPEN_JOBS, lost.job_id, waiting.job_id)


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
    try:
        sent: list[tuple[dict[str, Any], str, str]] = []
        reconciler(redis_client, sent).sweep()
        assert [] == [item for item in sent if item[2] in {finished.job_id, reserved.job_id}]
        assert redis_client.zscore(OPEN_JOBS, finished.job_id) is None
        assert redis_client.zscore(OPEN_JOBS, reserved.job_id) is not None
    finally:
        redis_client.hdel("unacked", f"tag-{reserved.job_id}")
        redis_client.zrem(OPEN_JOBS, reserved.job_id)


def test_a_restart_is_seen_once_per_redis_run(redis_client: redis_lib.Redis) -> None:
    redis_client.delete(RECONCILE_RUN_ID)
    sweeper = reconciler(redis_client, [])
    assert sweeper.restarted() is True
    assert sweeper.restarted() is False
    redis_client.set(RECONCILE_RUN_ID, "an-earlier-run")
    assert sweeper.restarted() is True
