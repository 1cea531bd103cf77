"""A job's status as Redis remembers it, and what to say once it no longer does (the API, the CLI, ``wait_for``).

A finished job's hash keeps only what status and dedupe need (``schemas.records.JOB_FINISHED_FIELDS``); its terminal
event is read from the verdict stream by ``stream_id``. Either can be gone: the stream is trimmed by length and age
(``GUARDQ_STREAM_MAXLEN``, ``GUARDQ_STREAM_MAX_AGE_S``), the record expires (``GUARDQ_JOB_TTL_S``, and for backfill
jobs ``GUARDQ_BULK_RECORD_TTL_S``). Each case is said as it is, pointing at the backfill's results where the job had
some — never a wrong answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis

from schemas.events import STREAM_FIELD
from schemas.keys import VERDICT_STREAM, job_key
from schemas.records import JobField, JobRecord
from worker.delivery.keys import RESULTS_TARGETS

NO_RECORD = (
    "no record of this job: it is unknown, or it finished longer ago than its record is kept (GUARDQ_JOB_TTL_S; "
    "GUARDQ_BULK_RECORD_TTL_S for backfill jobs, whose verdicts are in the backfill's results: "
    "guardq backfill report BACKFILL_ID)"
)


@dataclass
class JobView:
    """A job's hash as read (``fields``, what ``guardq status`` prints; typed as :attr:`record`), its terminal event
    when the stream still holds it, and a note when something is gone."""

    job_id: str
    fields: dict[str, str]
    event: dict[str, Any] | None
    note: str | None = None

    @cached_property
    def record(self) -> JobRecord:
        return JobRecord.from_hash(self.fields)

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def finished(self) -> bool:
        return self.record.finished

    @property
    def finished_at(self) -> float | None:
        """When the terminal event was published (the stream id's milliseconds)."""
        return self.record.finished_at


def read_job(client: redis.Redis[bytes], job_id: str) -> JobView | None:
    """The job's record and terminal event, or None when Redis has no record (say :data:`NO_RECORD`)."""
    raw = client.hgetall(job_key(job_id))
    if not raw:
        return None
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    legacy = fields.pop(JobField.EVENT, None)  # records written before the event moved out of the hash
    if legacy is not None:
        return JobView(job_id, fields, json.loads(legacy))
    view = JobView(job_id, fields, None)
    sid = view.record.stream_id
    if view.finished and sid:
        entries = client.xrange(VERDICT_STREAM, sid, sid)
        body = entries[0][1].get(STREAM_FIELD.encode()) if entries else None
        if body is not None:
            view.event = json.loads(body)
        else:
            view.note = trimmed_note(client, fields)
    return view


def trimmed_note(client: redis.Redis[bytes], fields: dict[str, str]) -> str:
    note = (
        f"the job {fields.get(JobField.STATE)} (stream id {fields.get(JobField.STREAM_ID)}); its event has been trimmed from "
        "the verdict stream (GUARDQ_STREAM_MAXLEN / GUARDQ_STREAM_MAX_AGE_S)"
    )
    backfill = fields.get(JobField.BACKFILL_ID)
    if backfill:
        target = client.hget(RESULTS_TARGETS, backfill)
        where = f"in {target.decode()}/{backfill}/" if target else "in the backfill's results"
        note += f"; its verdict is {where} (guardq backfill report {backfill})"
    return note
