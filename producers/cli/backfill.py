"""``guardq backfill``: moderate every object under an S3 prefix (or in an inventory), resumably, with backpressure.

``guardq backfill s3://bucket/prefix`` is short for ``guardq backfill run s3://bucket/prefix``; with
``--format webdataset|parquet`` the prefix holds a dataset's shards (docs/datasets.md);
``guardq backfill status ID`` reports a backfill's progress and verdict counts; ``guardq backfill list`` the recent
ones; ``guardq backfill report ID`` counts the results written by ``--results`` (it is ``guardq results report``).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Annotated, Any

import typer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from typer.core import TyperGroup

from producers.backfill.checkpoint import BackfillStore, RunLease, new_backfill_id
from producers.backfill.manifest import read_manifest
from producers.backfill.progress import LogReporter, RichReporter
from producers.backfill.runner import BackfillRunner
from producers.backfill.session import Outcome, execute
from producers.backfill.sources import s3_error
from producers.backfill.status import backfill_status
from producers.cli import dataset as ds
from producers.cli.common import check_policy_ref, fail, job_queue, parse_meta, redis_errors, settings
from producers.cli.results import report as results_report
from producers.s3client import make_s3_client
from schemas.backfill import BackfillOptions, BackfillRecord
from schemas.errors import GuardqError
from schemas.job import ImageRef, ModerationJob, Priority
from schemas.keys import queue_name
from schemas.logs import configure_logging
from schemas.models import get_model
from schemas.s3url import parse_s3_url
from worker.delivery import split_s3_uri


class _RunByDefault(TyperGroup):
    """``guardq backfill s3://…`` (anything that is not a subcommand) means ``guardq backfill run s3://…``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


backfill_cli = typer.Typer(
    cls=_RunByDefault, no_args_is_help=True, help="Backfill an S3 prefix or inventory into the bulk queue."
)


def _new_options(
    source: str | None,
    manifest: str | None,
    include: list[str],
    max_bytes: int | None,
    model: str | None,
    policy: str | None,
    tenant: str,
    meta: list[str],
    queue: str | None,
    results: str | None,
    s3: Any,
    dataset: dict[str, Any],
) -> BackfillOptions:
    if bool(source) == bool(manifest):
        fail("give either SOURCE (s3://bucket/prefix) or --manifest s3://…/manifest.json")
    spec = get_model(model or settings().model)
    try:  # the jobs' own rules (tenant name, metadata size, policy reference), checked once up front
        ModerationJob(image=ImageRef(uri="s3://probe/key"), tenant=tenant, metadata=parse_meta(meta), policy_ref=policy)
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    common: dict[str, Any] = {
        "include": include,
        "max_bytes": max_bytes,
        "model": spec.name,
        "policy_ref": policy,
        "tenant": tenant,
        "metadata": parse_meta(meta),
        "queue": queue or queue_name(spec, Priority.BULK),
        "results": _results_location(results, s3),
        **dataset,
    }
    if manifest:
        read_manifest(s3, manifest)  # fail now on a bad manifest, before a record exists
        return BackfillOptions(source=manifest, mode="manifest", bucket=parse_s3_url(manifest)[0], **common)
    assert source is not None
    bucket, prefix = parse_s3_url(source)
    try:
        s3.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, f"s3://{bucket}") from None
    options = BackfillOptions(source=source, mode="list", bucket=bucket, prefix=prefix, **common)
    ds.check_first_parquet(s3, options)
    return options


def _results_location(uri: str | None, s3: Any) -> str | None:
    """``--results s3://bucket/prefix``, checked now (its bucket must exist) rather than by a failing sink later."""
    if uri is None:
        return None
    bucket, _ = split_s3_uri(uri)
    try:
        s3.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, f"results bucket s3://{bucket}") from None
    return uri.rstrip("/")


@backfill_cli.command("run")
def run(
    source: Annotated[str | None, typer.Argument(help="s3://bucket/prefix to list (or use --manifest).")] = None,
    manifest: Annotated[str | None, typer.Option(help="S3 Inventory manifest: s3://…/manifest.json (CSV).")] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Glob on the key, e.g. '*.jpg' (repeatable; any matches).")
    ] = None,
    max_bytes: Annotated[int | None, typer.Option(min=0, help="Skip objects larger than this.")] = None,
    max_pending: Annotated[
        int | None, typer.Option(min=1, help="Most jobs waiting in the queue (default GUARDQ_BACKFILL_MAX_PENDING).")
    ] = None,
    page_size: Annotated[int | None, typer.Option(min=1, max=1000, help="Keys per list request.")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default GUARDQ_MODEL).")] = None,
    policy: Annotated[str | None, typer.Option(help="Stored policy NAME[@VERSION].")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant the jobs belong to.")] = "default",
    meta: Annotated[list[str] | None, typer.Option("--meta", help="Metadata KEY=VALUE on every job.")] = None,
    queue: Annotated[
        str | None, typer.Option(help="Queue to fill (default the model's bulk queue); for dedicated workers.")
    ] = None,
    results: Annotated[
        str | None,
        typer.Option(
            help="s3://bucket/prefix: write the verdicts there as JSON Lines (needs `guardq results sink` running); "
            "count them with `guardq backfill report ID`."
        ),
    ] = None,
    fmt: ds.FormatOption = "objects",
    key_column: ds.KeyColumnOption = None,
    image_column: ds.ImageColumnOption = None,
    url_column: ds.UrlColumnOption = None,
    results_format: ds.ResultsFormatOption = None,
    resume: Annotated[str | None, typer.Option(help="Continue the backfill with this id where it stopped.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be enqueued; send nothing.")] = False,
    log_interval: Annotated[float, typer.Option(min=0.1, help="Seconds between progress lines (no TTY).")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as JSON.")] = False,
) -> None:
    """List the objects, enqueue one bulk job per object, never exceeding --max-pending waiting jobs."""
    with redis_errors():
        _run(**locals())


def _run(
    source: str | None,
    manifest: str | None,
    include: list[str] | None,
    max_bytes: int | None,
    max_pending: int | None,
    page_size: int | None,
    model: str | None,
    policy: str | None,
    tenant: str,
    meta: list[str] | None,
    queue: str | None,
    results: str | None,
    fmt: str,
    key_column: str | None,
    image_column: str | None,
    url_column: str | None,
    results_format: str | None,
    resume: str | None,
    dry_run: bool,
    log_interval: float,
    as_json: bool,
) -> None:
    cfg = settings()
    configure_logging(cfg.log_format, cfg.log_level)
    for noisy in ("botocore", "boto3", "urllib3"):  # "Found credentials in …" is not progress
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(cfg.log_level)))
    s3 = make_s3_client(cfg)
    try:
        if resume:
            given = [source, manifest, include, max_bytes, model, policy, meta, queue, results, key_column]
            given += [image_column, url_column, results_format]
            if any(v for v in given) or tenant != "default" or fmt != "objects":
                fail("--resume continues with the options stored at creation: drop SOURCE and the filter/job options")
            if dry_run:
                fail("--dry-run cannot be combined with --resume")
            store: BackfillStore | None = BackfillStore(job_queue().redis)
            assert store is not None
            record = store.load(resume)
            if record.progress.state == "finished":
                fail(f"backfill {resume} already finished; start a new one to moderate again")
        else:
            dataset = ds.dataset_fields(
                fmt,
                key_column=key_column,
                image_column=image_column,
                url_column=url_column,
                results_format=results_format,
                results=results,
                manifest=manifest,
            )
            options = _new_options(
                source,
                manifest,
                include or [],
                max_bytes,
                model,
                policy,
                tenant,
                meta or [],
                queue,
                results,
                s3,
                dataset,
            )
            if dry_run:
                store, record = None, _dry_record(options)
            else:
                check_policy_ref(policy)
                store = BackfillStore(job_queue().redis)
                backfill_id = new_backfill_id()
                if options.results_format == "parquet" and options.results:
                    ds.claim_results(job_queue().redis, s3, backfill_id, options.results)
                record = store.create(options, backfill_id)
        lease = None
        if store is not None:
            lease = RunLease(job_queue().redis, record.backfill_id, cfg.backfill_lock_ttl_s)
            lease.acquire()
            ds.register_results_of(job_queue().redis, record)
            record.progress.state, record.progress.error = "running", ""
            store.save_state(record)
    except GuardqError as exc:
        fail(str(exc))
    outcome = _run_with_signals(
        record,
        store=store,
        lease=lease,
        s3=s3,
        max_pending=max_pending or cfg.backfill_max_pending,
        page_size=page_size or cfg.backfill_page_size,
        dry_run=dry_run,
        log_interval=log_interval,
    )
    _summary(outcome, as_json=as_json, dry_run=dry_run)


def _dry_record(options: BackfillOptions) -> BackfillRecord:
    from schemas.backfill import BackfillProgress

    return BackfillRecord("dry-run", options, BackfillProgress())


def _run_with_signals(record: BackfillRecord, *, dry_run: bool, log_interval: float, **kw: Any) -> Outcome:
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # second Ctrl-C: stop now (the per-job checkpoints already hold)
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    reporter = RichReporter() if sys.stderr.isatty() else LogReporter(log_interval)
    try:
        with reporter:
            runner_class = BackfillRunner
            if record.options.dataset:
                from producers.dataset.runner import DatasetRunner  # pyarrow: only for dataset backfills

                runner_class = DatasetRunner
            runner = runner_class(
                record,
                s3=kw["s3"],
                queue=None if dry_run else job_queue(),
                store=kw["store"],
                lease=kw["lease"],
                max_pending=kw["max_pending"],
                page_size=kw["page_size"],
                stop=stop,
                reporter=reporter,
            )
            outcome = execute(runner, kw["store"], kw["lease"])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        outcome.error = f"stopped by {signal.Signals(received[0]).name}"
    return outcome


def _summary(outcome: Outcome, *, as_json: bool, dry_run: bool) -> None:
    record, stats = outcome.record, outcome.stats
    p = record.progress
    bid = record.backfill_id
    data = {
        "backfill_id": None if dry_run else bid,
        "state": "dry-run" if dry_run and outcome.state == "finished" else outcome.state,
        "source": record.options.source,
        "queue": record.options.queue,
        "listed": p.listed,
        "enqueued": p.enqueued,
        "skipped": p.skipped,
        "skipped_by": {"include": p.skipped_include, "size": p.skipped_size, "other": p.skipped_other},
        "shards": p.shards if record.options.dataset else None,
        "enqueued_this_run": stats.enqueued_this_run,
        "seconds": round(stats.seconds, 3),
        "rate_per_s": round(stats.rate, 1),
        "peak_queue_depth": stats.peak_depth,
        "backpressure_waits": stats.waits,
        "error": outcome.error,
    }
    if as_json:
        typer.echo(json.dumps(data))
    else:
        verb = "would enqueue" if dry_run else "enqueued"
        typer.echo(f"backfill {'(dry run, nothing sent)' if dry_run else bid}: {data['state']}")
        typer.echo(
            f"  listed {p.listed:,} · {verb} {p.enqueued:,} · skipped {p.skipped:,} "
            f"(include {p.skipped_include:,}, size {p.skipped_size:,}, other {p.skipped_other:,})"
        )
        typer.echo(
            f"  this run: {stats.enqueued_this_run:,} in {stats.seconds:.2f}s ({stats.rate:,.0f} keys/s), "
            f"peak queue depth {stats.peak_depth:,}"
        )
        if record.options.dataset:
            typer.echo(f"  shards sent: {p.shards:,}")
        if outcome.error:
            typer.echo(f"  {outcome.error}")
        if not dry_run:
            if outcome.state != "finished":
                typer.echo(f"  resume: guardq backfill --resume {bid}")
            typer.echo(f"  status: guardq backfill status {bid}")
    if outcome.state == "interrupted":
        raise typer.Exit(130)
    if outcome.state == "failed":
        raise typer.Exit(1)


@backfill_cli.command("status")
def status(
    backfill_id: Annotated[str, typer.Argument(help="Backfill id printed by guardq backfill.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    shards: Annotated[
        bool, typer.Option("--shards", help="Dataset: a line for every shard, not only open ones.")
    ] = False,
) -> None:
    """Progress (listed/enqueued/skipped) and verdicts so far (completed/failed) of one backfill; per shard for a
    dataset."""
    try:
        with redis_errors():
            report = backfill_status(job_queue().redis, backfill_id)
    except GuardqError as exc:
        fail(str(exc), code=1)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"backfill {backfill_id}: {report['state']}  ({report['source']} → {report['queue']})")
    for key in ("listed", "enqueued", "skipped", "completed", "failed", "in_flight", "queue_depth"):
        typer.echo(f"  {key:<12} {report[key]:,}")
    for key in ("results", "last_key", "runner", "created_at", "updated_at", "finished_at", "error"):
        if report[key]:
            typer.echo(f"  {key:<12} {report[key]}")
    if "dataset" in report:
        ds.print_shards(report, every=shards)
    if not report["tally_caught_up"]:
        typer.echo("  (verdict tally still catching up; run status again)")
    if report["tally_gap"]:
        typer.echo("  (some verdict events were trimmed from the stream before being counted; counts may be low)")


@backfill_cli.command("list")
def list_backfills(count: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20) -> None:
    """The most recent backfill ids with their state and counts."""
    store = BackfillStore(job_queue().redis)
    with redis_errors():
        for bid in store.recent(count):
            try:
                rec = store.load(bid)
            except GuardqError:
                continue
            p = rec.progress
            typer.echo(f"{bid}  {p.state:<11} enqueued {p.enqueued:>10,}  {rec.options.source}")


backfill_cli.command("report")(results_report)  # one report, two names: `guardq results report` is the same
