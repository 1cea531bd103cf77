"""Read verdict events from the Redis Stream (tail, wait for given jobs)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import redis

from schemas.events import STREAM_FIELD, CloudEvent
from schemas.keys import VERDICT_STREAM


def last_id(client: redis.Redis[bytes], stream: str = VERDICT_STREAM) -> str:
    """Id of the newest entry (``0-0`` for an empty stream); read after it to see only new events."""
    newest = client.xrevrange(stream, count=1)
    if not newest:
        return "0-0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def read_events(
    client: redis.Redis[bytes],
    *,
    after: str = "$",
    block_ms: int = 1000,
    stream: str = VERDICT_STREAM,
    deadline: float | None = None,
) -> Iterator[tuple[str, CloudEvent]]:
    """Yield ``(stream id, event)`` after ``after`` until ``deadline`` (monotonic) or forever."""
    cursor = last_id(client, stream) if after == "$" else after
    while deadline is None or time.monotonic() < deadline:
        wait = block_ms if deadline is None else max(1, min(block_ms, int((deadline - time.monotonic()) * 1000)))
        batches = client.xread({stream: cursor}, count=500, block=wait)
        for _, entries in batches or []:
            for entry_id, fields in entries:
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                raw = fields.get(STREAM_FIELD.encode()) or fields.get(STREAM_FIELD)
                if raw is not None:
                    yield cursor, CloudEvent.model_validate_json(raw)


def finished_event(client: redis.Redis[bytes], job_id: str) -> CloudEvent | None:
    """The terminal event of a job if it has one already (and the stream still holds it)."""
    from worker.delivery.jobstatus import read_job

    view = read_job(client, job_id)
    return CloudEvent.model_validate(view.event) if view is not None and view.event is not None else None


def wait_for(
    client: redis.Redis[bytes], job_ids: Iterable[str], *, after: str, timeout_s: float
) -> Iterator[CloudEvent]:
    """Yield each job's terminal event as it arrives; stops when all arrived or the timeout passes."""
    pending = set(job_ids)
    for job_id in list(pending):
        event = finished_event(client, job_id)
        if event is not None:
            pending.discard(job_id)
            yield event
    if not pending:
        return
    deadline = time.monotonic() + timeout_s
    for _, event in read_events(client, after=after, deadline=deadline):
        if event.data.job_id in pending:
            pending.discard(event.data.job_id)
            yield event
            if not pending:
                return
