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
    from worker.delivery import register_results

    try:
        register_results(job_queue().redis, backfill_id, uri)
    except GuardqError as exc:
        fail(str(exc))
    typer.echo(f"{backfill_id} -> {uri.rstrip('/')}/{backfill_id}/")


@results_cli.command("sink")
def sink(name: Annotated[str | None, typer.Option(help="Consumer name (stable across restarts).")] = None) -> None:
    """Run the results sink until SIGTERM/Ctrl-C, then flush what it buffered."""
    from producers.s3client import make_s3_client
    from schemas.logs import configure_logging
    from worker.delivery import ResultsSink

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
    keep_list: Annotated[
        Path | None,
        typer.Option(help="Parquet results: write the keys that passed the policy to this file, one per line."),
    ] = None,
    failed: Annotated[
        Path | None, typer.Option(help="Parquet results: write every failed sample (shard, key, code) to this CSV.")
    ] = None,
) -> None:
    """Count a backfill's results by rating, category and error code (each event id once); optionally a CSV.
    For Parquet results (dataset mode): per shard, failed samples with their codes, and a keep list."""
    from producers.s3client import make_s3_client
    from worker.delivery import build_report, dataset_target, results_uri

    cfg = settings()
    target = dataset_target(job_queue().redis, backfill_id)
    if target is not None or (results is not None and (keep_list or failed)):
        _dataset_report(results or (target or {})["uri"], as_json=as_json, keep_list=keep_list, failed=failed)
        return
    if keep_list is not None or failed is not None:
        fail(f"--keep-list and --failed read Parquet results; backfill {backfill_id!r} has none (--results-format)")
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


def _dataset_report(uri: str, *, as_json: bool, keep_list: Path | None, failed: Path | None) -> None:
    from producers.s3client import make_s3_client
    from worker.delivery import build_dataset_report

    try:
        found = build_dataset_report(make_s3_client(settings()), uri, keep_list=keep_list, failed_csv=failed)
    except GuardqError as exc:
        fail(str(exc), code=1)
    summary = found.summary()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console = Console()
    state = "complete" if found.complete else "partial: shards still running"
    console.print(
        f"backfill [bold]{found.backfill_id}[/bold]: {found.rows} rows in {len(found.shards)} shards ({state}); "
        f"{summary['completed']} completed, {summary['failed']} failed, {found.kept} passed the policy"
    )
    table = Table(title="by shard")
    for column in ("shard", "rows", "completed", "failed", "kept"):
        table.add_column(column, justify="left" if column == "shard" else "right")
    for shard in found.shards:
        table.add_row(shard["shard"], *(str(shard[k]) for k in ("rows", "completed", "failed", "kept")))
    console.print(table)
    for title, counts in (("rating", found.ratings), ("category", found.categories), ("error", found.errors)):
        if counts:
            by = Table(title=f"by {title}")
            by.add_column(title)
            by.add_column("count", justify="right")
            for key, value in counts.most_common():
                by.add_row(str(key), str(value))
            console.print(by)
    if found.failed:
        listing = Table(title=f"failed samples (first {len(found.failed)}; all of them: --failed FILE)")
        for column in ("shard", "key", "error_code", "error_message"):
            listing.add_column(column)
        for item in found.failed:
            listing.add_row(item["shard"], str(item["key"]), item["error_code"], (item["error_message"] or "")[:80])
        console.print(listing)
    if keep_list is not None:
        console.print(f"wrote {found.kept} keys to {keep_list}")
