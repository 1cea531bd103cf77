"""``guardq status JOB_ID``: a job's state and, once it ended, its terminal event."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from producers.cli.common import fail, job_queue
from worker.delivery import NO_RECORD, read_job


def status(job_id: Annotated[str, typer.Argument(help="Job id printed by enqueue.")]) -> None:
    """Print the job's state as JSON; exit 1 if the job is unknown (or expired)."""
    view = read_job(job_queue().redis, job_id)
    if view is None:
        fail(f"no job {job_id!r}: {NO_RECORD}", code=1)
    out: dict[str, object] = {"job_id": job_id, **view.fields}
    if view.event is not None:
        out["event"] = view.event
    if view.note is not None:
        out["note"] = view.note
    typer.echo(json.dumps(out, indent=2))
