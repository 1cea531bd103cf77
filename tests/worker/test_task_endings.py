"""No path acknowledges a message whose job has no terminal event.

Unit tests of the task's exits (a stand-in for Celery's task object) and, through the shared real worker, a job
whose own Redis keys are unusable: it fails with ``internal_error`` once instead of going round forever.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import redis as redis_lib
from celery.exceptions import Reject, Retry
from redis import exceptions as rx

from schemas.errors import WorkerFault
from schemas.job import ImageRef, ModerationJob
from schemas.keys import policy_key
from schemas.settings import Settings
from tests.conftest import Runner
from worker.tasks import _retry


class FlakyRetry:
    """Celery's Task.retry: raises Reject(requeue=False) while publishing the retry fails, then Retry."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def retry(self, **_: Any) -> None:
        self.calls += 1
        if self.failures:
            raise Reject(self.failures.pop(0), requeue=False)
        raise Retry("scheduled")


RT: Any = SimpleNamespace(settings=Settings(visibility_timeout_s=600))


def test_a_retry_celery_could_not_publish_while_redis_was_unavailable_is_published_once_it_is_back() -> None:
    task = FlakyRetry(rx.ConnectionError("refused"), rx.TimeoutError("timeout"))
    with pytest.raises(Retry):
        _retry(task, RT, countdown=1.0)  # type: ignore[arg-type]
    assert 3 == task.calls


def test_a_retry_that_cannot_be_published_for_another_reason_keeps_the_message() -> None:
    """Celery would reject without requeue here: the message would be gone with no event."""
    with pytest.raises(Reject) as kept:
        _retry(FlakyRetry(ValueError("kombu could not serialize")), RT, countdown=1.0)  # type: ignore[arg-type]
    assert kept.value.requeue is True


def test_a_retry_refused_by_a_redis_out_of_memory_is_the_workers_fault() -> None:
    with pytest.raises(WorkerFault) as fault:
        _retry(FlakyRetry(rx.OutOfMemoryError("OOM command not allowed")), RT, countdown=1.0)  # type: ignore[arg-type]
    assert "redis_oom" == fault.value.cause


@pytest.mark.integration
def test_a_job_whose_policy_key_redis_refuses_fails_once_with_internal_error(
    runner: Runner, redis_client: redis_lib.Redis
) -> None:
    name = f"broken-{uuid.uuid4().hex[:8]}"
    redis_client.set(policy_key(name), "not a hash")  # WRONGTYPE for every HGET on it
    try:
        job = ModerationJob(image=ImageRef.parse("upload://nothing-needed.jpg"), policy_ref=name)
        event = runner.one(job, timeout_s=20)
        assert event.data.error is not None
        assert "internal_error" == event.data.error.code.value
        assert "WRONGTYPE" in event.data.error.message
        assert 1 == len(runner.events_for(job.job_id))
    finally:
        redis_client.delete(policy_key(name))
