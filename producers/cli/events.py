"""``guardq events``: read verdict events from the stream."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from producers.cli.common import job_queue
from producers.events import read_events

events_cli = typer.Typer(help="Read verdict events (CloudEvents JSON) from the Redis Stream.", no_args_is_help=True)


@events_cli.command("tail")
def tail(
    from_start: Annotated[bool, typer.Option("--from-start", help="Start at the oldest event kept.")] = False,
    after: Annotated[str | None, typer.Option(help="Start after this stream id.")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only 'completed' or 'failed' events.")] = None,
) -> None:
    """Print events as JSON lines as they arrive (new ones only unless --from-start/--after)."""
    if type_ not in {None, "completed", "failed"}:
        raise typer.BadParameter("--type must be 'completed' or 'failed'")
    client = job_queue().redis
    start = "0-0" if from_start else (after or "$")
    deadline = time.monotonic() + timeout if timeout else None
    printed = 0
    for _, event in read_events(client, after=start, deadline=deadline):
        if type_ and not event.type.value.endswith(type_):
            continue
        typer.echo(event.to_json())
        printed += 1
        if count and printed >= count:
            return
