"""Publish a job's one terminal event to the Redis Stream, guarded so a redelivered job never adds a second.

A Lua script (``publish_terminal.lua``) makes "check the guard, XADD (trimming the stream by length and age), compact the job record, leave
the indices" one atomic step: whichever delivery of a job gets there first publishes, every later one sees the
guard and publishes nothing. The guard is the job hash's own ``state`` (completed/failed): a finished job keeps
only what status and dedupe need (``schemas.records.JOB_FINISHED_FIELDS``: ~250 bytes by ``MEMORY USAGE`` with its key);
its event lives in the stream (``stream_id``) and the sinks, not copied into the hash. A backfill job's record is
its dedupe guard only and lives ``GUARDQ_BULK_RECORD_TTL_S`` (10 minutes); an interactive job's lives
``GUARDQ_JOB_TTL_S``.

The same scripts move a job between the reconciler's indices (``worker/reconcile.py``): begun → out of its queue's
open index (raising that queue's watermark) into the running one; handed back or retried → back into its queue's
open index; finished → out of both. Index times are Redis server time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from schemas.events import STREAM_FIELD, CloudEvent
from schemas.keys import (
    OPEN_JOBS,
    OPEN_JOBS_PREFIX,
    QUEUE_WATERMARKS,
    RUNNING_JOBS,
    VERDICT_STREAM,
    job_key,
    terminal_guard_key,
)
from schemas.records import FINISHED_STATES, JobField


def _script(*parts: str) -> str:
    """A script from the ``publish_<part>.lua`` files beside this module (preludes first)."""
    return "".join(Path(__file__).with_name(f"publish_{part}.lua").read_text() for part in parts)


# Each script first takes the job out of (or puts it back into) the reconciler's indices, then acts.
_PUBLISH = _script("finished", "terminal")  # the terminal event: XADD, compact the record, or count a duplicate
_PUBLISH_BARE = _script("bare")  # the same for a job whose hash Redis refuses to update (WRONGTYPE)
_BEGIN = _script("now", "finished", "begin")  # an attempt begins (running index, attempt bookkeeping)
_BACK_TO_QUEUE = _script("now", "finished", "requeue")  # handed back untouched, or a retry was scheduled


class Publisher:
    """Writes terminal events and job state; one instance (one Redis pool) per worker process."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        stream_maxlen: int,
        job_ttl_s: int,
        bulk_record_ttl_s: int | None = None,
        stream_max_age_s: int = 0,
        stream: str = VERDICT_STREAM,
    ) -> None:
        self._redis = client
        self._stream = stream
        self._maxlen = stream_maxlen
        self._ttl = job_ttl_s
        self._bulk_ttl = bulk_record_ttl_s if bulk_record_ttl_s is not None else job_ttl_s
        self._max_age_ms = stream_max_age_s * 1000
        self._publish = client.register_script(_PUBLISH)
        self._publish_bare = client.register_script(_PUBLISH_BARE)
        self._back_to_queue = client.register_script(_BACK_TO_QUEUE)
        self._begin = client.register_script(_BEGIN)

    def begin(self, job_id: str, attempt: int, worker: str) -> bool:
        """Record that ``attempt`` started, in one round trip; False (and the delivery counted as a duplicate in
        ``duplicate_deliveries``) when the job already has its terminal event."""
        keys = [terminal_guard_key(job_id), job_key(job_id), RUNNING_JOBS, QUEUE_WATERMARKS]
        return bool(self._begin(keys=keys, args=[attempt, worker, self._ttl, job_id, OPEN_JOBS_PREFIX]))

    def is_terminal(self, job_id: str) -> bool:
        state, guarded = (
            self._redis.pipeline(transaction=False)
            .hget(job_key(job_id), JobField.STATE)
            .exists(terminal_guard_key(job_id))
            .execute()
        )
        return (state or b"").decode() in FINISHED_STATES or bool(guarded)

    def publish(self, event: CloudEvent, *, callback_url: str | None = None) -> str | None:
        """XADD the event unless the job already has a terminal event; return the stream id or None.

        ``callback_url`` (the job's) is recorded in the job hash in the same atomic step, where the webhook
        dispatcher finds it when it fans the event out: no window in which the event exists without it.
        """
        job_id = event.data.job_id
        state = "completed" if event.completed else "failed"  # one of FINISHED_STATES: the guard
        keys = [terminal_guard_key(job_id), self._stream, job_key(job_id), OPEN_JOBS, RUNNING_JOBS]
        min_id = f"{int(time.time() * 1000) - self._max_age_ms}-0" if self._max_age_ms else ""
        args: list[Any] = [
            event.to_json(),
            self._maxlen,
            self._ttl,
            state,
            STREAM_FIELD,
            callback_url or "",
            job_id,
            OPEN_JOBS_PREFIX,
            self._bulk_ttl,
            min_id,
        ]
        sid = self._publish(keys=keys, args=args)
        return sid.decode() if isinstance(sid, bytes) else sid

    def publish_bare(self, event: CloudEvent) -> str | None:
        """Publish guarded by a guard key of its own, without touching the job hash: for a job whose hash Redis
        refuses to update (``WRONGTYPE``: someone wrote another type under its key), so it still ends in one event."""
        job_id = event.data.job_id
        keys = [terminal_guard_key(job_id), self._stream, OPEN_JOBS, RUNNING_JOBS]
        sid = self._publish_bare(keys=keys, args=[event.to_json(), self._maxlen, self._ttl, STREAM_FIELD, job_id])
        return sid.decode() if isinstance(sid, bytes) else sid

    def requeued(self, job_id: str, *, state: str = "queued") -> None:
        """The job's message went back to its queue (handed back untouched, or a retry was scheduled): its state
        reads ``state`` and it is in its queue's open index again, at the back."""
        keys = [terminal_guard_key(job_id), job_key(job_id), RUNNING_JOBS]
        self._back_to_queue(keys=keys, args=[state, job_id, OPEN_JOBS_PREFIX])
