"""A status query never gives a wrong answer: a trimmed event or an expired record is said as such (real Redis)."""

from __future__ import annotations

import uuid

import pytest
import redis as redis_lib

from schemas.keys import VERDICT_STREAM, job_key
from worker.delivery.jobstatus import NO_RECORD, read_job
from worker.delivery.keys import RESULTS_TARGETS
from worker.eventbuild import failed_event

pytestmark = pytest.mark.integration


def test_a_finished_job_reads_its_event_from_the_stream(redis_client: redis_lib.Redis) -> None:
    job_id = uuid.uuid4().hex
    event = failed_event(source="urn:test", job_id=job_id, error=ValueError("x"), attempts=1)
    sid = redis_client.xadd(VERDICT_STREAM, {"event": event.to_json()})  # a well-formed event: the stream is shared
    redis_client.hset(job_key(job_id), mapping={"state": "failed", "stream_id": sid, "tenant": "t"})
    view = read_job(redis_client, job_id)
    assert view is not None and view.finished and view.note is None
    assert event.id == (view.event or {}).get("id")


def test_a_backfill_job_whose_event_was_trimmed_points_at_its_results(redis_client: redis_lib.Redis) -> None:
    job_id, backfill = uuid.uuid4().hex, f"bf-{uuid.uuid4().hex[:8]}"
    redis_client.hset(RESULTS_TARGETS, backfill, "s3://reports/moderation")
    redis_client.hset(
        job_key(job_id), mapping={"state": "failed", "stream_id": "1-1", "tenant": "t", "backfill_id": backfill}
    )
    try:
        view = read_job(redis_client, job_id)
        assert view is not None and view.event is None
        assert view.note is not None and "trimmed" in view.note
        assert f"s3://reports/moderation/{backfill}/" in view.note and f"guardq backfill report {backfill}" in view.note
    finally:
        redis_client.hdel(RESULTS_TARGETS, backfill)


def test_a_job_without_a_record_is_reported_unknown_or_expired_never_as_queued(redis_client: redis_lib.Redis) -> None:
    assert read_job(redis_client, uuid.uuid4().hex) is None
    assert "GUARDQ_JOB_TTL_S" in NO_RECORD and "guardq backfill report" in NO_RECORD
