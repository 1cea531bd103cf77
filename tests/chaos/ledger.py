"""Account for every job of a fault-injection run: completed + failed must equal enqueued, no duplicates.

``lost``: no terminal event on the stream; ``stuck``: the job's state hash is not terminal (queued or running);
``duplicated``: terminal events beyond the first; ``redeliveries``: deliveries beyond the attempts (a message run
again after a crash or a Redis restart); ``retries``: attempts beyond the first (transient failures).

Results are appended as JSON rows under ``var/reliability/`` so ``python -m tests.chaos.report`` can write the
tables of docs/reliability.md from what the suite actually measured.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from schemas.events import CloudEvent
from schemas.keys import RUNNING_JOBS, VERDICT_STREAM, job_key, open_jobs_key
from schemas.settings import Settings
from worker.kombu_compat import reserved_job_ids

RESULTS = Path(__file__).resolve().parents[2] / "var" / "reliability"


@dataclass
class Tally:
    """What happened to a set of jobs."""

    scenario: str
    variant: str
    enqueued: int
    completed: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    redeliveries: int = 0
    retries: int = 0
    stuck: int = 0
    kills: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    seconds: float = 0.0

    @property
    def survived(self) -> int:
        return self.completed + self.failed

    @property
    def accounted(self) -> bool:
        """Every job ended in exactly one terminal event and none is left half-way."""
        return (self.survived, self.lost, self.duplicated, self.stuck) == (self.enqueued, 0, 0, 0)

    def row(self) -> dict[str, Any]:
        return asdict(self) | {
            "survived": self.survived,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def tally(client: redis.Redis[bytes], job_ids: list[str], *, scenario: str, variant: str, notes: str = "") -> Tally:
    """Read the whole stream once and every job's state hash; count outcomes per job."""
    wanted = set(job_ids)
    per_job: Counter[str] = Counter()
    outcome: dict[str, CloudEvent] = {}
    for _, fields in client.xrange(VERDICT_STREAM):
        event = CloudEvent.model_validate_json(fields[b"event"])
        if event.data.job_id in wanted:
            per_job[event.data.job_id] += 1
            outcome[event.data.job_id] = event
    result = Tally(scenario, variant, enqueued=len(job_ids), notes=notes)
    codes: Counter[str] = Counter()
    pipe = client.pipeline()
    for job_id in job_ids:
        pipe.hmget(job_key(job_id), "deliveries", "attempts", "state")
    states = pipe.execute()
    for job_id, (deliveries, attempts, state) in zip(job_ids, states, strict=True):
        if state not in (b"completed", b"failed"):
            result.stuck += 1
        event = outcome.get(job_id)
        if event is None:
            result.lost += 1
            continue
        result.duplicated += per_job[job_id] - 1
        if event.completed:
            result.completed += 1
        else:
            result.failed += 1
            assert event.data.error is not None
            codes[event.data.error.code.value] += 1
        tries = int(attempts or 1)
        result.retries += tries - 1
        result.redeliveries += max(0, int(deliveries or 1) - tries)
    result.codes = dict(codes)
    unfinished = [j for j, (_, _, state) in zip(job_ids, states, strict=True) if state not in (b"completed", b"failed")]
    unended = [j for j in job_ids if j not in outcome]
    if unfinished or unended:
        result.extra["unfinished"] = [where_is(client, j) for j in list(dict.fromkeys(unended + unfinished))[:5]]
    return result


def where_is(client: redis.Redis[bytes], job_id: str) -> dict[str, Any]:
    """Where a job that did not end is: its record (without the message), its message in its queue or held by
    kombu as unacknowledged, its place in the reconciler's indices. Written with the tally, so a lost or stuck job
    of a rare run can be explained afterwards."""
    record = {k.decode(): v.decode(errors="replace") for k, v in client.hgetall(job_key(job_id)).items()}
    record.pop("message", None)
    queue = record.get("queue", "")
    in_queue = bool(queue) and any(job_id.encode() in entry for entry in client.lrange(queue, 0, -1))
    return {
        "job_id": job_id,
        "record": record,
        "in_queue": in_queue,
        "unacked": job_id in reserved_job_ids(client),
        "open_index": client.zscore(open_jobs_key(queue), job_id) if queue else None,
        "running_index": client.zscore(RUNNING_JOBS, job_id),
    }


def worker_settings(settings: Settings) -> dict[str, object]:
    """What a reader needs to judge figures measured against a worker with these settings."""
    return {
        "visibility_timeout_s": settings.visibility_timeout_s,
        "max_retries": settings.max_retries,
        "sglang_timeout_s": settings.sglang_timeout_s,
        "invalid_output_retries": settings.invalid_output_retries,
        "max_image_bytes": settings.max_image_bytes,
        "max_image_pixels": settings.max_image_pixels,
    }


def record(result: Tally) -> None:
    """Append the row, with the test that measured it (to reproduce it) and the machine it ran on."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    row = result.row() | {
        "test": current.rsplit(" (", 1)[0],
        "machine": platform.node(),
        "cores": os.cpu_count(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{result.scenario}.jsonl").open("a") as out:
        out.write(json.dumps(row) + "\n")
