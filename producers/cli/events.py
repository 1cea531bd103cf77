"""``guardq events``: read verdict events from the stream (plain or as a consumer group) and replay them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Annotated

import typer

from producers.cli.common import fail, job_queue, settings
from worker.delivery import Entry, StreamConsumer, read_events

events_cli = typer.Typer(help="Read verdict events (CloudEvents JSON) from the Redis Stream.", no_args_is_help=True)


@events_cli.command("tail")
def tail(
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Start at the oldest event kept (a new --group starts there too).")
    ] = False,
    after: Annotated[str | None, typer.Option(help="Start after this stream id (not with --group).")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only 'completed' or 'failed' events.")] = None,
    group: Annotated[
        str | None, typer.Option(help="Read as this consumer group (created if missing); acks what it printed.")
    ] = None,
    consumer: Annotated[str | None, typer.Option(help="Consumer name within --group (stable across restarts).")] = None,
    min_idle_ms: Annotated[
        int, typer.Option(min=1, help="Reclaim other consumers' entries pending longer than this.")
    ] = 60_000,
    max_deliveries: Annotated[
        int, typer.Option(min=1, help="Dead-letter an entry delivered more often than this.")
    ] = 5,
) -> None:
    """Print events as JSON lines as they arrive (new ones only unless --from-start/--after).

    With --group/--consumer it is a consumer-group reader (at-least-once; dedupe on the event id): it prints this
    consumer's unacked entries first, reclaims entries of dead consumers idle for --min-idle-ms (XAUTOCLAIM),
    acks each entry after printing it, and moves entries delivered more than --max-deliveries times to
    guardq:verdicts.dlq. Entries filtered out by --type are acked too.
    """
    if type_ not in {None, "completed", "failed"}:
        fail("--type must be 'completed' or 'failed'")
    if (group is None) != (consumer is None):
        fail("--group and --consumer go together")
    deadline = time.monotonic() + timeout if timeout else None
    if group is not None and consumer is not None:
        if after:
            fail("--after cannot be combined with --group (a group remembers its own position)")
        _tail_group(group, consumer, from_start, count, deadline, type_, min_idle_ms, max_deliveries)
        return
    client = job_queue().redis
    start = "0-0" if from_start else (after or "$")
    printed = 0
    for _, event in read_events(client, after=start, deadline=deadline):
        if type_ and not event.type.value.endswith(type_):
            continue
        typer.echo(event.to_json())
        printed += 1
        if count and printed >= count:
            return


def _tail_group(
    group: str,
    consumer: str,
    from_start: bool,
    count: int | None,
    deadline: float | None,
    type_: str | None,
    min_idle_ms: int,
    max_deliveries: int,
) -> None:
    reader = StreamConsumer(
        job_queue().redis,
        group=group,
        consumer=consumer,
        start_id="0" if from_start else "$",
        min_idle_ms=min_idle_ms,
        max_deliveries=max_deliveries,
        dlq_maxlen=settings().dlq_maxlen,
    )

    printed = 0

    def show(entry: Entry) -> None:
        nonlocal printed
        assert entry.event is not None  # invalid entries never reach the handler
        if type_ is None or entry.event.type.value.endswith(type_):
            typer.echo(entry.event.to_json())
            printed += 1

    with contextlib.suppress(KeyboardInterrupt):
        reader.run(show, deadline=deadline, should_stop=lambda: count is not None and printed >= count)


@events_cli.command("replay")
def replay(
    since: Annotated[str, typer.Option(help="From this time: ISO 8601, unix seconds, or an age like 2h or 3d.")],
    subscription: Annotated[str, typer.Option("--subscription", help="Webhook subscription id to re-send to.")],
    until: Annotated[str | None, typer.Option(help="Up to this time (same forms as --since).")] = None,
    type_: Annotated[
        list[str] | None, typer.Option("--type", help="Only these types: completed, failed (repeatable).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Re-send at most this many events.")] = None,
) -> None:
    """Re-send stored events (still on the stream) to a webhook subscription, with their original ids.

    Receivers dedupe on webhook-id, so events they already processed are harmless. Prints the replay's id and
    counts as JSON; the webhook worker delivers them with the usual retries.
    """
    from schemas.errors import GuardqError
    from worker.delivery import parse_time, replay_events

    try:
        result = replay_events(
            job_queue().redis,
            settings(),
            subscription,
            since=parse_time(since),
            until=parse_time(until) if until else None,
            types=type_,
            limit=limit,
        )
    except (GuardqError, ValueError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(dataclasses.asdict(result)))
