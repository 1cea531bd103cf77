"""``guardq results``: backfill results as JSON Lines in S3 — where they go, the sink that writes them, a report."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from producers.cli.common import fail, job_queue, settings
from schemas.errors import GuardqError

results_cli = typer.Typer(help="Backfill results as JSON Lines objects in S3.", no_args_is_help=True)


@results_cli.command("register")
def register(
    backfill_id: Annotated[str, typer.Argument(help="The backfill's id (data.backfill_id of its events).")],
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix; objects go under <prefix>/<backfill id>/.")],
) -> None:
    """Send a backfill's verdicts to an S3 prefix (what `backfill --results` does before enqueueing)."""
    from producers.results.targets import register_results

    try:
        register_results(job_queue().redis, backfill_id, uri)
    except GuardqError as exc:
        fail(str(exc))
    typer.echo(f"{backfill_id} -> {uri.rstrip('/')}/{backfill_id}/")


@results_cli.command("sink")
def sink(name: Annotated[str | None, typer.Option(help="Consumer name (stable across restarts).")] = None) -> None:
    """Run the results sink until SIGTERM/Ctrl-C, then flush what it buffered."""
    from producers.results.sink import ResultsSink
    from producers.s3client import make_s3_client
    from schemas.logs import configure_logging

    cfg = settings()
    configure_logging(cfg.log_format, cfg.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = ResultsSink(job_queue().redis, make_s3_client(cfg), cfg, consumer=name)
    worker.run(should_stop=stop.is_set)


@results_cli.command("report")
def report(
    backfill_id: Annotated[str, typer.Argument(help="The backfill's id.")],
    results: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix (default: where the backfill was registered).")
    ] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write one row per image to this CSV file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON instead of tables.")] = False,
) -> None:
    """Count a backfill's results by rating, category and error code (each event id once); optionally a CSV."""
    from producers.results.report import build_report
    from producers.results.targets import results_uri
    from producers.s3client import make_s3_client

    cfg = settings()
    uri = results or results_uri(job_queue().redis, cfg, backfill_id)
    if uri is None:
        fail(f"no results location for backfill {backfill_id!r}: pass --results s3://bucket/prefix", code=1)
    try:
        found = build_report(make_s3_client(cfg), uri, backfill_id)
    except GuardqError as exc:
        fail(str(exc))
    if found.objects == 0:
        fail(f"no result objects for backfill {backfill_id!r} under {uri}", code=1)
    if csv_path is not None:
        found.write_csv(csv_path)
    summary = found.summary()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console = Console()
    console.print(
        f"backfill [bold]{backfill_id}[/bold]: {found.events} events in {found.objects} objects"
        f" ({summary['completed']} completed, {summary['failed']} failed, {found.duplicates} duplicate lines)"
    )
    for title, counts in (("rating", found.ratings), ("category", found.categories), ("error", found.errors)):
        if counts:
            table = Table(title=f"by {title}")
            table.add_column(title)
            table.add_column("count", justify="right")
            for key, value in counts.most_common():
                table.add_row(str(key), str(value))
            console.print(table)
    if csv_path is not None:
        console.print(f"wrote {len(found.rows)} rows to {csv_path}")
