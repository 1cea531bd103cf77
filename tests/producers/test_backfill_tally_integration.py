"""The per-backfill verdict tally against real Redis: every terminal event counted exactly once, even with
several tallies racing, and events of other jobs or unknown backfills ignored."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis as redis_lib

from producers.backfill.checkpoint import BackfillStore
from producers.backfill.tally import tally
from schemas.backfill import BackfillOptions
from schemas.errors import ErrorCode
from schemas.events import CloudEvent, ErrorInfo, EventData, EventType, ImageFacts, event_id
from schemas.keys import VERDICT_STREAM
from schemas.models import DEFAULT_MODEL
from schemas.verdict import Verdict

pytestmark = pytest.mark.integration


def event(backfill_id: str | None, completed: bool) -> str:
    job_id = uuid.uuid4().hex
    data = EventData(
        job_id=job_id,
        backfill_id=backfill_id,
        image=ImageFacts(uri="s3://guardq-test/tally.jpg"),
        verdict=Verdict(rating="Safe", category="NA: None applying") if completed else None,
        error=None if completed else ErrorInfo(code=ErrorCode.NOT_FOUND, message="gone", retryable=False, attempts=1),
    )
    return CloudEvent(
        id=event_id(job_id),
        source="urn:guardq:test",
        subject=data.image.uri,
        data=data,
        type=EventType.COMPLETED if completed else EventType.FAILED,
    ).to_json()


def test_concurrent_tallies_count_each_terminal_event_of_a_backfill_exactly_once(
    redis_client: redis_lib.Redis,
) -> None:
    store = BackfillStore(redis_client)
    options = BackfillOptions(
        source="s3://guardq-test/t/", mode="list", bucket="guardq-test", model=DEFAULT_MODEL, queue="guardq.test.tally"
    )
    record = store.create(options)
    for i in range(300):  # 200 completed + 100 failed of ours, interleaved with other traffic
        redis_client.xadd(VERDICT_STREAM, {"event": event(record.backfill_id, completed=i % 3 != 0)})
        redis_client.xadd(VERDICT_STREAM, {"event": event(None, completed=True)})
        if i % 50 == 0:
            redis_client.xadd(VERDICT_STREAM, {"event": event("bf-ffffffffffffffff", completed=True)})

    threads = [threading.Thread(target=tally, kwargs={"client": redis_client, "batch": 37}) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    again = store.load(record.backfill_id)
    assert (200, 100) == (again.completed, again.failed)
    assert not redis_client.exists("guardq:backfill:bf-ffffffffffffffff")  # unknown ids create nothing
