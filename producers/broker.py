"""Send ``guardq.moderate`` tasks by name and look at queues, without importing the worker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cached_property

import redis
from celery import Celery
from redis.client import Pipeline

from schemas.job import ModerationJob
from schemas.keys import OPEN_JOBS, TASK_MODERATE, job_key, queue_name
from schemas.models import get_model
from schemas.settings import Settings


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
        """Record the job as queued (with its message, in the open-jobs index), then enqueue it; the task id is the
        job id.

        ``queue`` overrides the model's queue (a backfill routed to dedicated ``guardq worker --queues`` workers);
        ``also`` adds the caller's own writes to the same round trip as the job record (a backfill's checkpoint).
        """
        target = queue or self.queue_for(job)
        key = job_key(job.job_id)
        message = job.to_message()
        now = time.time()
        pipe = self.redis.pipeline()
        if also is not None:
            also(pipe)
        pipe.hsetnx(key, "state", "queued")
        pipe.hset(
            key,
            mapping={
                "tenant": job.tenant,
                "image": str(job.image),
                "created_at": job.created_at.isoformat(),
                "queue": target,
                "enqueued_at": now,
                "message": json.dumps(message),  # what a reconciler re-sends if the broker loses the message
                **({"backfill_id": job.backfill_id} if job.backfill_id else {}),
            },
        )
        pipe.expire(key, self.settings.job_ttl_s)
        pipe.zadd(OPEN_JOBS, {job.job_id: now})
        pipe.execute()
        self.celery.send_task(
            TASK_MODERATE,
            args=[message],
            queue=target,
            task_id=job.job_id,
            # A short repr instead of Celery's saferepr of the whole job: half the client CPU per message, and
            # no second copy of the job in every message's headers.
            argsrepr=f"[{job.image}]",
            kwargsrepr="{}",
        )
        return job.job_id

    def was_sent(self, job_id: str, queue: str, *, unacked_key: str = "unacked") -> bool:
        """Whether a job whose send may have been cut short (a crash) reached the broker.

        The job hash is written before the message, so no hash means never sent; a state past ``queued`` means a
        worker has it; otherwise look for the task id in the waiting list and in kombu's ``unacked`` hash
        (reserved by a worker, not started). Used once per resumed backfill, for its one in-doubt job.
        """
        state = self.redis.hget(job_key(job_id), "state")
        if state is None:
            return False
        if state != b"queued":
            return True
        needle = f'"{job_id}"'.encode()
        length = int(self.redis.llen(queue))
        for start in range(0, length, 1000):
            if any(needle in message for message in self.redis.lrange(queue, start, start + 999)):
                return True
        return any(needle in value for value in self.redis.hvals(unacked_key))

    def depth(self, queue: str) -> int:
        """Messages waiting in a queue (Redis list length; reserved/unacked ones are not counted)."""
        return int(self.redis.llen(queue))

    def close(self) -> None:
        if "redis" in self.__dict__:
            self.redis.close()
        if "celery" in self.__dict__:
            self.celery.close()
