"""The dataset-mode parts of ``guardq backfill``: checking ``--format``/``--*-column``/``--results-format`` up front,
claiming a Parquet results location, and printing the per-shard status."""

from __future__ import annotations

from typing import Annotated, Any

import redis
import typer

from producers.backfill.sources import list_pages
from producers.cli.common import fail
from producers.dataset.window import S3Window
from producers.rediskeys import DATASET_RESULTS_OWNERS
from schemas.backfill import BackfillOptions, BackfillRecord
from schemas.errors import GuardqError
from worker.delivery import register_results

FORMATS = ("objects", "webdataset", "parquet")
RESULTS_FORMATS = ("jsonl", "parquet")

# The options `guardq backfill run` takes for dataset mode (docs/datasets.md).
FormatOption = Annotated[
    str,
    typer.Option(
        "--format", help="What the prefix holds: objects (one image each), webdataset (tar shards) or parquet."
    ),
]
KeyColumnOption = Annotated[
    str | None, typer.Option(help="Dataset: the sample key column of Parquet files and sidecars (default key).")
]
ImageColumnOption = Annotated[str | None, typer.Option(help="--format parquet: column of image bytes.")]
UrlColumnOption = Annotated[str | None, typer.Option(help="--format parquet: column of image URLs.")]
ResultsFormatOption = Annotated[
    str | None,
    typer.Option(help="jsonl (default) or parquet: one verdicts Parquet per input shard, plus _manifest.json."),
]


def dataset_fields(
    fmt: str,
    *,
    key_column: str | None,
    image_column: str | None,
    url_column: str | None,
    results_format: str | None,
    results: str | None,
    manifest: str | None,
) -> dict[str, Any]:
    """The BackfillOptions fields of the dataset options, or one clear line and exit 2."""
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if results_format is not None and results_format not in RESULTS_FORMATS:
        fail(f"--results-format must be jsonl or parquet, not {results_format!r}")
    columns = {"--key-column": key_column, "--image-column": image_column, "--url-column": url_column}
    if fmt == "objects":
        given = [name for name, value in columns.items() if value is not None]
        if given:
            fail(f"{', '.join(given)} need --format parquet (or webdataset for --key-column)")
        if results_format == "parquet":
            fail("--results-format parquet writes one file per input shard: it needs --format webdataset or parquet")
        return {}
    if manifest:
        fail("--manifest lists objects; a dataset is read from a prefix: give s3://bucket/prefix with --format")
    if fmt == "webdataset" and (image_column or url_column):
        fail("--image-column/--url-column are for --format parquet (a tar shard's images are its members)")
    if fmt == "parquet" and bool(image_column) == bool(url_column):
        fail("--format parquet needs exactly one of --image-column (image bytes) or --url-column (image URLs)")
    if results_format == "parquet" and not results:
        fail("--results-format parquet needs --results s3://bucket/prefix")
    return {
        "format": fmt,
        "key_column": key_column or "key",
        "image_column": image_column,
        "url_column": url_column,
        "results_format": results_format or "jsonl",
    }


def check_first_parquet(s3: Any, options: BackfillOptions) -> None:
    """``--format parquet``: the first file under the prefix must have the named columns (typos fail now)."""
    if options.format != "parquet":
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    for page in list_pages(s3, options.bucket, options.prefix, page_size=1000):
        first = next((obj for obj in page if obj.key.endswith(".parquet")), None)
        if first is None:
            continue
        where = f"s3://{first.bucket}/{first.key}"
        try:
            names = pq.ParquetFile(
                pa.PythonFile(S3Window(s3, first.bucket, first.key, size=first.size or 0), mode="r")
            ).schema_arrow.names
        except (pa.ArrowException, OSError, ValueError) as exc:
            fail(f"{where} is not a readable Parquet file: {exc}")
        for flag, column in (("--image-column", options.image_column), ("--url-column", options.url_column)):
            if column is not None and column not in names:
                fail(f"{flag} {column}: {where} has no such column (columns: {', '.join(names)[:200]})")
        if options.key_column != "key" and options.key_column not in names:
            fail(f"--key-column {options.key_column}: {where} has no such column (columns: {', '.join(names)[:200]})")
        return


def claim_results(client: redis.Redis[bytes], s3: Any, backfill_id: str, uri: str) -> None:
    """One backfill per Parquet results location (its files are named after the input shards, not the backfill):
    claimed for ``backfill_id`` before that backfill's record is created."""
    from worker.delivery import read_manifest

    owner = client.hget(DATASET_RESULTS_OWNERS, uri)
    if owner is not None and owner.decode() != backfill_id:
        fail(f"--results {uri} already holds the results of backfill {owner.decode()}; choose another prefix")
    try:
        found = read_manifest(s3, uri)
    except GuardqError as exc:
        fail(str(exc))
    if found is not None and found.get("backfill_id") != backfill_id:
        fail(f"--results {uri} already holds the results of backfill {found.get('backfill_id')}; choose another prefix")
    if owner is None and not client.hsetnx(DATASET_RESULTS_OWNERS, uri, backfill_id):
        fail(f"--results {uri} was just claimed by another backfill; choose another prefix")


def print_shards(report: dict[str, Any], *, every: bool) -> None:
    """The dataset lines of ``guardq backfill status`` (all shards with ``--shards``, else those with news)."""
    summary = report["dataset"]
    typer.echo(
        f"  shards       {summary['shards_sent']:,} sent · {summary['missing_images']:,} rows without an image · "
        f"{summary['shards_with_problems']:,} with problems"
        + (
            f" · results {summary['results_written']:,} written, {summary['results_waiting']:,} waiting"
            if report["results_format"] == "parquet"
            else ""
        )
    )
    for shard in report["shards"]:
        if shard["state"] == "sending":
            typer.echo(f"  {shard['shard']}: sending ({shard['rows_handled']:,} rows so far)")
            continue
        if not every and not shard["problems"] and not shard["in_flight"] and shard["results"] != "waiting":
            continue
        skipped = sum(shard["skipped"].values())
        line = (
            f"  {shard['shard']}: {shard['jobs']:,} jobs ({shard['missing']:,} without image), {skipped:,} skipped · "
            f"{shard['completed']:,} completed, {shard['failed']:,} failed, {shard['in_flight']:,} in flight"
        )
        if shard["results"]:
            line += f" · results {shard['results']}"
        typer.echo(line)
        for problem in shard["problems"]:
            typer.echo(f"      problem: {problem}")


def register_results_of(client: redis.Redis[bytes], record: BackfillRecord) -> None:
    """Before the run's first job, on every run: the results sink must know the backfill's events."""
    opts = record.options
    if opts.results and opts.results_format == "parquet":
        from worker.delivery import register_dataset_results

        register_dataset_results(client, record.backfill_id, opts.results, opts.prefix)
    elif opts.results:
        register_results(client, record.backfill_id, opts.results)
