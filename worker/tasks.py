"""The ``guardq.moderate`` task: run the pipeline, retry transient failures, always end in one event."""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject
from redis.exceptions import RedisError

from schemas.errors import ErrorCode, GuardqError
from schemas.events import CloudEvent
from schemas.keys import TASK_MODERATE
from worker.app import app
from worker.eventbuild import failed_event
from worker.lifecycle import server_is_down, server_unreachable
from worker.metrics import get_metrics
from worker.pipeline import Progress, parse_job
from worker.retry import backoff_s, should_retry
from worker.runtime import Runtime, get_runtime

log = structlog.get_logger("guardq.worker")
SERVER_DOWN_GRACE_S = 1.0  # a job that finds its server down waits this long for it before going back to the queue


def _job_id(message: Any, task_id: str) -> str:
    if isinstance(message, dict) and isinstance(message.get("job_id"), str) and message["job_id"]:
        return str(message["job_id"])[:128]
    return task_id


@app.task(  # type: ignore[untyped-decorator]
    name=TASK_MODERATE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
def moderate(self: Task, job: Any) -> None:
    """Moderate one job; the job ends in exactly one completed or failed event on ``guardq:verdicts``.

    Redis trouble (the broker itself) requeues the message rather than dropping it: if Redis is down the
    message stays unacknowledged and is redelivered after the visibility timeout.
    """
    rt = get_runtime()
    meter = get_metrics()
    retries = int(self.request.retries or 0)
    job_id = _job_id(job, str(self.request.id))
    structlog.contextvars.bind_contextvars(job_id=job_id, attempt=retries + 1, model=rt.model.slug, gpu=rt.settings.gpu)
    try:
        if not rt.publisher.begin(job_id, retries + 1, str(self.request.hostname or rt.hostname)):
            meter.duplicate_delivery()
            log.info("job_already_finished")
            return
        if server_is_down(wait_s=SERVER_DOWN_GRACE_S):
            # Taken in the moment before the pause reached the consumer: hand it back untouched, no retry spent.
            meter.requeue("server_down")
            log.warning("job_requeued_server_down")
            raise Reject("inference server is down", requeue=True)
        with meter.running():
            progress = Progress()
            event = _run(self, rt, job, job_id, retries, progress)
            started = time.perf_counter()
            sid = _publish(rt, event, callback_url=progress.job.callback_url if progress.job else None)
            meter.finished(event, publish_s=time.perf_counter() - started, duplicate=sid is None)
        log.info(
            "job_finished",
            type=event.type.value,
            stream_id=sid,
            duplicate=sid is None,
            code=event.data.error.code.value if event.data.error else None,
            rating=event.data.verdict.rating if event.data.verdict else None,
        )
    except RedisError as exc:
        log.error("redis_unavailable", error=repr(exc))
        raise Reject(exc, requeue=True) from None
    finally:
        structlog.contextvars.clear_contextvars()


def _publish(rt: Runtime, event: CloudEvent, *, callback_url: str | None) -> str | None:
    """Publish, riding out a Redis outage for up to half the visibility timeout.

    The verdict is already paid for; waiting for Redis to come back beats throwing it away. Meanwhile this thread
    stays off the broker channel, which Celery is busy re-establishing.
    """
    deadline = time.monotonic() + rt.settings.visibility_timeout_s / 2
    delay = 0.1
    while True:
        try:
            return rt.publisher.publish(event, callback_url=callback_url)
        except RedisError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("publish_waiting_for_redis", error=repr(exc), delay_s=delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _run(task: Task, rt: Runtime, message: Any, job_id: str, retries: int, progress: Progress) -> CloudEvent:
    """Return the job's terminal event, or raise Celery's Retry for a transient failure with retries left."""
    try:
        parsed = parse_job(message)
        structlog.contextvars.bind_contextvars(tenant=parsed.tenant)
        return rt.moderator.run(parsed, attempt=retries + 1, progress=progress)
    except RedisError:
        raise
    except GuardqError as exc:
        if exc.code is ErrorCode.INFERENCE_UNAVAILABLE:
            server_unreachable()
        if should_retry(exc, retries, rt.settings):
            delay = backoff_s(retries, rt.settings, retry_after=getattr(exc, "retry_after", None))
            get_metrics().retry(exc.code.value)
            log.warning("job_retry", code=exc.code.value, error=exc.message, delay_s=delay)
            raise task.retry(countdown=delay, max_retries=rt.settings.max_retries) from None
        error: Exception = exc
    except Exception as exc:  # a bug must still end the job, loudly
        log.exception("job_internal_error")
        error = exc
    return failed_event(
        source=rt.settings.event_source,
        job_id=job_id,
        error=error,
        attempts=retries + 1,
        job=progress.job,
        raw=message if isinstance(message, dict) else None,
        image=progress.image,
        policy=progress.policy,
        model=progress.model,
        timings=progress.timings,
    )
