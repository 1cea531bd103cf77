"""Send ``guardq.moderate`` tasks by name and look at queues, without importing the worker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import redis
from celery import Celery
from redis.client import Pipeline

from producers.taskmessage import redis_entry
from schemas.job import ModerationJob
from schemas.keys import OPEN_QUEUES, job_key, open_jobs_key, queue_name, terminal_guard_key
from schemas.models import get_model
from schemas.records import JobField
from schemas.settings import Settings


@dataclass(frozen=True)
class JobRecord:
    """What Redis still remembers of a job id: when it was enqueued and what image it was for."""

    age_s: float
    image: str | None


class JobQueue:
    """A producer's handle on the broker: one Celery client app and one Redis pool per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def celery(self) -> Celery:
        app = Celery("guardq-producer", broker=self.settings.redis_url, set_as_current=False)
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_transport_options=self.settings.broker_transport_options(),
            broker_connection_retry_on_startup=True,
            task_ignore_result=True,
        )
        return app

    @cached_property
    def redis(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=30, socket_connect_timeout=5)

    def queue_for(self, job: ModerationJob) -> str:
        return queue_name(get_model(job.model or self.settings.model), job.priority)

    def send(
        self,
        job: ModerationJob,
        *,
        queue: str | None = None,
        also: Callable[[Pipeline[bytes]], object] | None = None,
    ) -> str:
        """Record the job as queued (with its message, in the open-jobs index) and enqueue it, atomically; the task
        id is the job id. See :meth:`send_many`."""
        return self.send_many([job], queue=queue, also=also)[0]

    def send_many(
        self,
        jobs: Sequence[ModerationJob],
        *,
        queue: str | None = None,
        also: Callable[[Pipeline[bytes]], object] | None = None,
    ) -> list[str]:
        """Send jobs in one Redis transaction (MULTI/EXEC): each job's record, its entry in its queue's open index and
        its Celery message, plus the caller's own writes: all of them land or none do.

        ``queue`` overrides each job's model queue (a backfill routed to dedicated ``guardq worker --queues``
        workers); ``also`` adds writes that must go with these jobs (a backfill's checkpoint). One round trip for
        the batch instead of two per job (a record, then Celery's ``LPUSH``): a backfill enqueues ~10x faster, and
        no job can be recorded but not sent (or sent but not recorded) if the producer dies in between.
        """
        now = time.time()
        seconds, micros = self.redis.time()  # the reconciler's indices run on Redis' clock, not the producers'
        joined = seconds + micros / 1e6
        pipe = self.redis.pipeline(transaction=True)
        if also is not None:
            also(pipe)
        for job in jobs:
            target = queue or self.queue_for(job)
            key = job_key(job.job_id)
            message = job.to_message()
            pipe.hsetnx(key, JobField.STATE, "queued")
            pipe.hset(
                key,
                mapping={
                    JobField.TENANT: job.tenant,
                    JobField.IMAGE: str(job.image),
                    JobField.CREATED_AT: job.created_at.isoformat(),
                    JobField.QUEUE: target,
                    JobField.ENQUEUED_AT: now,
                    JobField.MESSAGE: json.dumps(message),  # what a reconciler re-sends if the broker loses it
                    **({JobField.BACKFILL_ID: job.backfill_id} if job.backfill_id else {}),
                },
            )
            pipe.expire(key, self.settings.job_ttl_s)
            pipe.zadd(open_jobs_key(target), {job.job_id: joined})
            pipe.sadd(OPEN_QUEUES, target)
            # A short argsrepr instead of Celery's saferepr of the whole job: less CPU per message, and no second
            # copy of the job in every message's headers.
            entry = redis_entry(
                self.celery, task_id=job.job_id, args=[message], queue=target, argsrepr=f"[{job.image}]"
            )
            pipe.lpush(target, entry)
        pipe.execute()
        return [job.job_id for job in jobs]

    def record_of(self, job_id: str) -> JobRecord | None:
        """The job this id already names (its record or its terminal guard), or None for an unused id."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(job_key(job_id), [JobField.ENQUEUED_AT, JobField.IMAGE, JobField.STREAM_ID, JobField.STATE])
        pipe.exists(terminal_guard_key(job_id))
        (enqueued_at, image, stream_id, state), guarded = pipe.execute()
        if state is None and not guarded:
            return None
        if enqueued_at is not None:
            age = time.time() - float(enqueued_at)
        elif stream_id is not None:  # a finished job's compact record: it was enqueued before it ended
            age = time.time() - int(stream_id.split(b"-", 1)[0]) / 1000
        else:
            age = float("inf")
        return JobRecord(age_s=age, image=image.decode() if image is not None else None)

    def depth(self, queue: str) -> int:
        """Messages waiting in a queue (Redis list length; reserved/unacked ones are not counted)."""
        return int(self.redis.llen(queue))

    def close(self) -> None:
        if "redis" in self.__dict__:
            self.redis.close()
        if "celery" in self.__dict__:
            self.celery.close()
