"""The ``guardq.moderate`` task: run the pipeline, retry transient failures, always end in one event.

No path acknowledges a message whose job has no terminal event. Every way out of the task is one of:

- the terminal event is published (or was already: a redelivery), then Celery acknowledges;
- Celery's retry message is published, then Celery acknowledges this one (a retry Celery could not publish
  is waited out while Redis is unavailable, and otherwise keeps this message: ``Reject(requeue=True)``);
- the message goes back to its queue untouched (``Reject(requeue=True)``): Redis unavailable, the inference
  server down, or a fault of this worker (``WorkerFault``: bad credentials, wrong SGLang URL or key, Redis
  refusing writes), which also pauses the worker (``worker.faults``);
- the worker dies: the message stays reserved and comes back (``worker.reclaim``, the visibility timeout).
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import structlog
from celery import Task
from celery.exceptions import Reject, Retry
from redis.exceptions import RedisError

from schemas.errors import ErrorCode, GuardqError, WorkerFault
from schemas.events import CloudEvent
from schemas.keys import TASK_MODERATE
from worker.app import app
from worker.eventbuild import failed_event
from worker.faults import get_faults
from worker.lifecycle import server_is_down, server_unreachable
from worker.metrics import get_metrics
from worker.pipeline import Progress, parse_job
from worker.redisfaults import RedisTrouble, as_worker_fault, classify_redis_error
from worker.retry import backoff_s, reclassify, should_retry
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
    """Moderate one job; the job ends in exactly one completed or failed event on ``guardq:verdicts``."""
    rt = get_runtime()
    retries = int(self.request.retries or 0)
    job_id = _job_id(job, str(self.request.id))
    structlog.contextvars.bind_contextvars(job_id=job_id, attempt=retries + 1, model=rt.model.slug, gpu=rt.settings.gpu)
    try:
        _attempt(self, rt, job, job_id, retries)
    except (Retry, Reject):
        raise
    except WorkerFault as fault:
        _hand_back(rt, job_id, fault)
    except RedisError as exc:
        trouble = classify_redis_error(exc)
        if trouble is RedisTrouble.REFUSING:
            _hand_back(rt, job_id, as_worker_fault(exc))
        if trouble is RedisTrouble.DATA:
            _end_despite(rt, job, job_id, retries, exc)
            return
        log.error("redis_unavailable", error=repr(exc))
        raise Reject(exc, requeue=True) from None
    except Exception as exc:  # a bug outside the pipeline: the job still ends, or stays queued
        log.exception("job_internal_error")
        _end_despite(rt, job, job_id, retries, exc)
    finally:
        structlog.contextvars.clear_contextvars()


def _attempt(task: Task, rt: Runtime, job: Any, job_id: str, retries: int) -> None:
    meter = get_metrics()
    if not rt.publisher.begin(job_id, retries + 1, str(task.request.hostname or rt.hostname)):
        meter.duplicate_delivery()
        log.info("job_already_finished")
        return
    if server_is_down(wait_s=SERVER_DOWN_GRACE_S):
        # Taken in the moment before the pause reached the consumer: hand it back untouched, no retry spent.
        meter.requeue("server_down")
        rt.publisher.requeued(job_id)
        log.warning("job_requeued_server_down")
        raise Reject("inference server is down", requeue=True)
    with meter.running():
        progress = Progress()
        event = _run(task, rt, job, job_id, retries, progress)
        started = time.perf_counter()
        sid = _publish(rt, event, callback_url=progress.job.callback_url if progress.job else None)
        meter.finished(event, publish_s=time.perf_counter() - started, duplicate=sid is None)
        if sid is not None and event.completed:  # the event that holds the verdict's rationale
            _compact_cache_entry(rt, progress, sid)
    get_faults().job_ended_normally()
    log.info(
        "job_finished",
        type=event.type.value,
        stream_id=sid,
        duplicate=sid is None,
        code=event.data.error.code.value if event.data.error else None,
        rating=event.data.verdict.rating if event.data.verdict else None,
    )


def _compact_cache_entry(rt: Runtime, progress: Progress, sid: str) -> None:
    """Best effort: an entry left whole costs bytes, never a verdict."""
    try:
        rt.moderator.published(progress, sid)
    except RedisError as exc:
        log.info("cache_entry_not_compacted", error=repr(exc))


def _hand_back(rt: Runtime, job_id: str, fault: WorkerFault) -> NoReturn:
    """This worker cannot do the job: pause consuming (``worker.faults``) and put the job back for another."""
    get_faults().report(fault)
    server_unreachable()  # wake the consumer switch now instead of at its next probe
    get_metrics().requeue("worker_fault")
    try:
        rt.publisher.requeued(job_id)
    except RedisError as exc:
        log.info("job_state_not_reset", error=repr(exc))
    log.warning("job_requeued_worker_fault", cause=fault.cause, error=fault.message)
    raise Reject(fault.message, requeue=True)


def _end_despite(rt: Runtime, job: Any, job_id: str, retries: int, error: Exception) -> None:
    """End a job whose attempt broke outside the pipeline (a bug, a ``WRONGTYPE`` on its own keys) with a failed
    ``internal_error`` event; when not even that can be published, keep the message for a later delivery."""
    event = failed_event(
        source=rt.settings.event_source,
        job_id=job_id,
        error=error,
        attempts=retries + 1,
        raw=job if isinstance(job, dict) else None,
    )
    try:
        try:
            sid = rt.publisher.publish(event)
        except RedisError as exc:
            if classify_redis_error(exc) is not RedisTrouble.DATA:
                raise
            # Lua scripts keep the writes made before a failing command: the event may be out already.
            sid = None if rt.publisher.is_terminal(job_id) else rt.publisher.publish_bare(event)
    except Exception as exc:
        log.error("job_left_queued_unpublishable", error=repr(error), publish_error=repr(exc))
        raise Reject(exc, requeue=True) from None
    get_metrics().finished(event, publish_s=None, duplicate=sid is None)
    log.error("job_failed_outside_pipeline", error=repr(error), stream_id=sid)


def _publish(rt: Runtime, event: CloudEvent, *, callback_url: str | None) -> str | None:
    """Publish, riding out a Redis outage for up to half the visibility timeout.

    The verdict is already paid for; waiting for Redis to come back beats throwing it away. Meanwhile this thread
    stays off the broker channel, which Celery is busy re-establishing. Only an unavailable Redis is waited for:
    one refusing writes, or refusing this job's keys, is raised at once.
    """
    deadline = time.monotonic() + rt.settings.visibility_timeout_s / 2
    delay = 0.1
    while True:
        try:
            return rt.publisher.publish(event, callback_url=callback_url)
        except RedisError as exc:
            if classify_redis_error(exc) is not RedisTrouble.UNAVAILABLE or time.monotonic() + delay > deadline:
                raise
            log.warning("publish_waiting_for_redis", error=repr(exc), delay_s=delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _retry(task: Task, rt: Runtime, countdown: float, job_id: str = "") -> NoReturn:
    """Schedule the retry (Celery publishes a new message, then acknowledges this one).

    Celery's ``Task.retry`` rejects the message *without requeue* when publishing the retry fails: the job would be
    gone. An unavailable Redis is waited out (as for publishing); anything else keeps this message instead.
    """
    deadline = time.monotonic() + rt.settings.visibility_timeout_s / 2
    delay = 0.1
    if job_id:
        rt.publisher.requeued(job_id, state="retrying")  # its new message joins the back of the queue
    while True:
        try:
            task.retry(countdown=countdown, max_retries=rt.settings.max_retries)
        except Reject as exc:
            if exc.requeue:
                raise
            cause = exc.reason
            if isinstance(cause, RedisError):
                trouble = classify_redis_error(cause)
                if trouble is RedisTrouble.REFUSING:
                    raise as_worker_fault(cause) from None
                if trouble is RedisTrouble.UNAVAILABLE and time.monotonic() + delay <= deadline:
                    log.warning("retry_waiting_for_redis", error=repr(cause), delay_s=delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
            log.error("retry_unpublished_message_kept", error=repr(cause))
            raise Reject(cause, requeue=True) from None
        raise AssertionError("Task.retry returns only by raising")


def _run(task: Task, rt: Runtime, message: Any, job_id: str, retries: int, progress: Progress) -> CloudEvent:
    """Return the job's terminal event, or raise Celery's Retry for a transient failure with retries left."""
    try:
        parsed = parse_job(message)
        structlog.contextvars.bind_contextvars(tenant=parsed.tenant)
        return rt.moderator.run(parsed, attempt=retries + 1, progress=progress)
    except RedisError as exc:
        if classify_redis_error(exc) is not RedisTrouble.DATA:
            raise
        log.error("redis_data_error", error=repr(exc))  # a key of this job's (cache, policy) Redis refuses
        error: Exception = exc
    except WorkerFault:
        raise
    except GuardqError as raised:
        problem = reclassify(raised)
        if isinstance(problem, WorkerFault):
            raise problem from None
        if problem.code is ErrorCode.INFERENCE_UNAVAILABLE:
            server_unreachable()
        if should_retry(problem, retries, rt.settings):
            delay = backoff_s(retries, rt.settings, retry_after=getattr(problem, "retry_after", None))
            get_metrics().retry(problem.code.value)
            log.warning("job_retry", code=problem.code.value, error=problem.message, delay_s=delay)
            _retry(task, rt, delay, job_id)
        error = problem
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
