"""``guardq status JOB_ID``: a job's state and, once it ended, its terminal event."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from producers.cli.common import fail, job_queue
from schemas.keys import job_key


def status(job_id: Annotated[str, typer.Argument(help="Job id printed by enqueue.")]) -> None:
    """Print the job's state as JSON; exit 1 if the job is unknown (or expired)."""
    raw = job_queue().redis.hgetall(job_key(job_id))
    if not raw:
        fail(f"no job {job_id!r} (unknown, or older than GUARDQ_JOB_TTL_S)", code=1)
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    out: dict[str, object] = {"job_id": job_id, **{k: v for k, v in fields.items() if k != "event"}}
    if "event" in fields:
        out["event"] = json.loads(fields["event"])
    typer.echo(json.dumps(out, indent=2))
