"""Queue messages that never reach the task still end in one failed ``invalid_job`` event.

Celery drops, with a log line and no trace for the producer, every message its consumer cannot turn into a task
call: a body that does not decode ("Can't decode message body"), content it refuses (pickle), a message that is
not a task message, a task name it does not know. Entries that are not even a kombu envelope arrive here too,
quarantined by ``worker.kombu_compat``. :class:`GuardqConsumer` (``worker_consumer`` in ``worker.app``) ends
each with a ``guardq.moderation.failed`` event, code ``invalid_job``, then acknowledges it.

The event's job id is the message's task id (``headers.id``; producers set it to the job id). A message without
one gets ``malformed-<first 32 hex of the sha256 of its body>`` (of the raw entry, for one that was not a
kombu envelope), the same for every redelivery of it, so the publish
guard still allows one event only.

A task whose arguments do not fit ``guardq.moderate(job)`` raises before its body runs; the ``task_failure``
hook publishes its failed event (``invalid_job``; ``internal_error`` for anything else that escaped the task).

If Redis refuses the event, the message is left unacknowledged: the visibility timeout brings it back.
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from celery.signals import task_failure
from celery.worker.consumer import Consumer
from redis.exceptions import RedisError

from schemas.errors import ErrorCode, PermanentError
from schemas.keys import TASK_MODERATE
from worker.eventbuild import failed_event
from worker.kombu_compat import QUARANTINE_HEADER
from worker.runtime import get_runtime

log = structlog.get_logger("guardq.malformed")
MAX_REASON_CHARS = 300


def malformed_job_id(raw: bytes | str) -> str:
    """The job id of a message that carries no task id: derived from its bytes, stable across redeliveries."""
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    return f"malformed-{hashlib.sha256(data).hexdigest()[:32]}"


def _usable_id(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable() else None


def _message_job_id(message: Any) -> str:
    headers = message.headers if isinstance(getattr(message, "headers", None), dict) else {}
    found = _usable_id(headers.get("id")) or _usable_id((message.properties or {}).get("correlation_id"))
    return found or malformed_job_id(message.body if isinstance(message.body, bytes | str) else repr(message.body))


def publish_invalid(job_id: str, reason: str, *, code: ErrorCode = ErrorCode.INVALID_JOB, raw: Any = None) -> bool:
    """Publish the failed event of a job that never ran; False when Redis could not take it."""
    rt = get_runtime()
    event = failed_event(
        source=rt.settings.event_source,
        job_id=job_id,
        error=PermanentError(reason[:MAX_REASON_CHARS], code=code),
        attempts=1,
        raw=raw if isinstance(raw, dict) else None,
    )
    try:
        stream_id = rt.publisher.publish(event)
    except RedisError as exc:
        log.error("malformed_message_unpublished", job_id=job_id, reason=reason, error=repr(exc))
        return False
    log.warning("malformed_message", job_id=job_id, code=code.value, reason=reason, stream_id=stream_id)
    return True


def end_message(message: Any, reason: str) -> None:
    """Give an undeliverable message its failed event, then acknowledge it (never before the event exists)."""
    headers = message.headers if isinstance(getattr(message, "headers", None), dict) else {}
    if isinstance(headers.get(QUARANTINE_HEADER), str):
        reason = headers[QUARANTINE_HEADER]  # what was wrong with the entry, not the quarantine's own refusal
    if publish_invalid(_message_job_id(message), reason):
        message.ack()


class GuardqConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with every "drop the message" path turned into a failed event first."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        end_message(message, f"message body cannot be decoded: {type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        end_message(message, "not a Celery task message (no task name)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = message.headers.get("task") if isinstance(message.headers, dict) else None
        end_message(message, f"unknown task {name!r}; this queue takes {TASK_MODERATE}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        end_message(message, f"invalid task message: {type(exc).__name__}: {exc}")


@task_failure.connect  # type: ignore[untyped-decorator]
def _task_failed_without_event(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: object,
) -> None:
    """``guardq.moderate`` catches everything it can; what still escapes must not leave the job without an event."""
    if getattr(sender, "name", None) != TASK_MODERATE or task_id is None:
        return
    positional = list(args or [])
    job = positional[0] if len(positional) == 1 else None
    job_id = (_usable_id(job.get("job_id")) if isinstance(job, dict) else None) or task_id
    if len(positional) != 1 or kwargs:
        reason = (
            f"{TASK_MODERATE} takes one argument (the job); got {len(positional)} positional "
            f"and {len(kwargs or {})} keyword argument(s)"
        )
        publish_invalid(job_id, reason, raw=job)
    else:
        publish_invalid(job_id, f"{type(exception).__name__}: {exception}", code=ErrorCode.INTERNAL_ERROR, raw=job)
