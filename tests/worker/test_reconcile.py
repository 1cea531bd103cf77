"""The reconciler re-sends jobs the broker lost, and only those, at a cost independent of how many jobs are open.

A private redis-server (the reconciler reads fleet-wide indices); no worker consumes. Jobs are sent through the real
producer path; the worker's side of the bookkeeping (``begin``, ``publish``) through the real Publisher.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from producers.broker import JobQueue
from schemas.events import CloudEvent
from schemas.job import ImageRef, ModerationJob
from schemas.keys import RUNNING_JOBS, job_key, open_jobs_key
from schemas.settings import Settings
from tests.services.procs import Service, start_redis
from worker.eventbuild import failed_event
from worker.publish import Publisher
from worker.reconcile import Reconciler

pytestmark = pytest.mark.integration
Sent = list[tuple[dict[str, Any], str, str]]
QUEUE = "guardq.reconcile-test"


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(Path(tmp_path_factory.mktemp("reconcile")) / "redis")
    yield service
    service.stop()


@pytest.fixture
def client(own_redis: Service) -> Iterator[redis_lib.Redis]:
    c = redis_lib.Redis.from_url(own_redis.url)
    c.flushdb()
    yield c
    c.close()


@pytest.fixture
def producer(own_redis: Service) -> Iterator[JobQueue]:
    queue = JobQueue(Settings(redis_url=own_redis.url))
    yield queue
    queue.close()


def a_job() -> ModerationJob:
    return ModerationJob(image=ImageRef.parse(f"s3://bucket-x/{uuid.uuid4().hex}.jpg"))


def reconciler(client: redis_lib.Redis, sent: Sent, grace_s: float = 10, margin_s: float = 30) -> Reconciler:
    def send(message: dict[str, Any], queue: str, job_id: str) -> None:
        sent.append((message, queue, job_id))

    return Reconciler(client, send, node="test", grace_s=grace_s, margin_s=margin_s)


def redis_now(client: redis_lib.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def test_a_job_lost_from_a_drained_queue_is_sent_again_once_it_was_missing_for_a_whole_interval(
    producer: JobQueue, client: redis_lib.Redis
) -> None:
    lost = a_job()
    producer.send(lost, queue=QUEUE)
    raw = client.rpop(QUEUE)  # the broker loses it: a worker killed (or Redis crashing) between BRPOP and bookkeeping
    assert raw is not None and lost.job_id == json.loads(raw)["headers"]["id"]
    sent: Sent = []
    sweeper = reconciler(client, sent)
    t0 = redis_now(client)
    sweeper.sweep(now=t0 + 5)  # the queue is empty but the job is younger than the margin: nothing yet
    sweeper.sweep(now=t0 + 31)  # first sighting: a suspect, not yet re-sent
    assert [] == sent
    sweeper.sweep(now=t0 + 36)  # still within the grace
    assert [] == sent
    sweeper.sweep(now=t0 + 41)
    assert [(lost.to_message(), QUEUE, lost.job_id)] == sent
    assert b"1" == client.hget(job_key(lost.job_id), "reconciled")
    assert client.zscore(open_jobs_key(QUEUE), lost.job_id) is not None  # its new message waits in the queue again


def test_a_job_passed_by_later_ones_in_a_busy_queue_is_a_suspect(producer: JobQueue, client: redis_lib.Redis) -> None:
    """FIFO: a job that joined the queue earlier than one that already began should have been taken."""
    lost, waiting, later = a_job(), a_job(), a_job()
    for job in (lost, waiting, later):
        producer.send(job, queue=QUEUE)
    t0 = redis_now(client)
    client.zadd(open_jobs_key(QUEUE), {lost.job_id: t0 - 60, waiting.job_id: t0 - 1})  # lost joined a minute ago
    client.lrem(QUEUE, 1, next(e for e in client.lrange(QUEUE, 0, -1) if lost.job_id.encode() in e))
    client.lrem(QUEUE, 1, next(e for e in client.lrange(QUEUE, 0, -1) if later.job_id.encode() in e))
    publisher = Publisher(client, stream_maxlen=1000, job_ttl_s=600)
    assert publisher.begin(later.job_id, 1, "w1")  # a later job began: the queue's watermark passes the lost one
    sent: Sent = []
    sweeper = reconciler(client, sent)
    sweeper.sweep(now=t0)
    sweeper.sweep(now=t0 + 10)
    assert [lost.job_id] == [job_id for _, _, job_id in sent]  # not the waiting one, whose message is queued


def test_a_message_seen_missing_only_once_is_not_resent(producer: JobQueue, client: redis_lib.Redis) -> None:
    """A message between BRPOP and its bookkeeping is missing for a moment: it must not be taken for lost."""
    job = a_job()
    producer.send(job, queue=QUEUE)
    raw = client.rpop(QUEUE)
    assert raw is not None
    sent: Sent = []
    sweeper = reconciler(client, sent)
    t0 = redis_now(client)
    sweeper.sweep(now=t0 + 31)
    envelope = [json.loads(raw), "", QUEUE]  # the worker recorded it as reserved before the next sweep
    client.hset("unacked", "tag-1", json.dumps(envelope))
    sweeper.sweep(now=t0 + 45)
    assert [] == sent


def test_a_running_job_whose_message_no_worker_holds_is_sent_again(
    producer: JobQueue, client: redis_lib.Redis
) -> None:
    """A redelivered message lost in the BRPOP window: the job had begun once, no one holds it now."""
    job = a_job()
    producer.send(job, queue=QUEUE)
    client.rpop(QUEUE)
    Publisher(client, stream_maxlen=1000, job_ttl_s=600).begin(job.job_id, 1, "w-dead")
    sent: Sent = []
    sweeper = reconciler(client, sent)
    t0 = redis_now(client)
    sweeper.sweep(now=t0 + 11)
    sweeper.sweep(now=t0 + 22)
    assert [job.job_id] == [job_id for _, _, job_id in sent]
    assert client.zscore(RUNNING_JOBS, job.job_id) is None


def test_finished_jobs_leave_the_indices_and_reserved_ones_are_left_alone(
    producer: JobQueue, client: redis_lib.Redis
) -> None:
    finished, reserved = a_job(), a_job()
    producer.send(finished, queue=QUEUE)
    producer.send(reserved, queue=QUEUE)
    client.delete(QUEUE)
    publisher = Publisher(client, stream_maxlen=1000, job_ttl_s=600)
    publisher.begin(finished.job_id, 1, "w1")
    event: CloudEvent = failed_event(source="urn:t", job_id=finished.job_id, error=ValueError("x"), attempts=1)
    assert publisher.publish(event) is not None
    envelope = {"headers": {"id": reserved.job_id}, "properties": {"delivery_tag": "t"}}
    client.hset("unacked", f"tag-{reserved.job_id}", json.dumps([envelope, "", QUEUE]))
    sent: Sent = []
    sweeper = reconciler(client, sent)
    t0 = redis_now(client)
    sweeper.sweep(now=t0 + 40)
    sweeper.sweep(now=t0 + 60)
    assert [] == sent
    assert client.zscore(open_jobs_key(QUEUE), finished.job_id) is None
    assert client.zscore(RUNNING_JOBS, finished.job_id) is None
    assert client.zscore(open_jobs_key(QUEUE), reserved.job_id) is not None


def test_a_deep_backlog_costs_the_sweep_nothing(producer: JobQueue, client: redis_lib.Redis) -> None:
    """Thousands of queued jobs (a backfill) are neither read nor skipped: the sweep looks only below watermarks."""
    jobs = [a_job() for _ in range(3000)]
    producer.send_many(jobs, queue=QUEUE)
    publisher = Publisher(client, stream_maxlen=1000, job_ttl_s=600)
    client.rpop(QUEUE)
    publisher.begin(jobs[0].job_id, 1, "w1")  # the head of the queue was taken and begun
    sent: Sent = []
    sweeper = reconciler(client, sent)
    t0 = redis_now(client)
    assert 0 == sweeper.sweep(now=t0 + 5)  # (the one running job is within the grace)
    assert 0 == sweeper.last_examined
    assert [] == sent


def test_the_sweep_lock_is_released_only_by_its_holder(producer: JobQueue, client: redis_lib.Redis) -> None:
    sent: Sent = []
    sweeper = reconciler(client, sent)
    client.set("guardq:reconcile:lock", "another-worker:token", ex=60)
    assert 0 == sweeper.sweep()  # held by another: skipped, and its lock left in place
    assert b"another-worker:token" == client.get("guardq:reconcile:lock")
