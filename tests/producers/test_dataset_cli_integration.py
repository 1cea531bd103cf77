"""``guardq backfill --format …`` as users type it: bad option combinations refused in one line before anything is
created, a dry run counting a dataset's rows, and a Parquet collection of image URLs moderated through the real
worker behind its SSRF guard, with a failed row (and its code) for every URL that cannot be fetched."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from typer.testing import CliRunner, Result

from producers.cli import app
from producers.rediskeys import BACKFILL_INDEX
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET, Runner
from tests.producers.conftest import reset_cli_state
from tests.producers.datasets import image_table, img2dataset_sample, sidecar, tar_shard, url_table
from tests.services.procs import wait_until
from tests.worker.delivery.test_results_integration import RunningSink
from tests.worker.test_http_source_integration import ImageSite
from worker.delivery.results.shardfile import read_manifest, read_results
from worker.delivery.results.sink import ResultsSink

pytestmark = pytest.mark.integration


def guardq(env: dict[str, str], *args: str) -> Result:
    reset_cli_state()
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        reset_cli_state()


@pytest.fixture(scope="module")
def dataset(s3_client: Any) -> str:
    """A small WebDataset prefix (two shards, one with a sidecar) and a Parquet prefix."""
    root = f"dscli-{uuid.uuid4().hex[:8]}/"
    samples = [img2dataset_sample(f"a{i}", images.solid()) for i in range(3)]
    s3_client.put_object(Bucket=BUCKET, Key=f"{root}wds/00000.tar", Body=tar_shard(samples))
    side = sidecar([("a0", "success"), ("a1", "success"), ("a2", "success"), ("a3", "failed_to_download")])
    s3_client.put_object(Bucket=BUCKET, Key=f"{root}wds/00000.parquet", Body=side)
    s3_client.put_object(Bucket=BUCKET, Key=f"{root}wds/00001.tar", Body=tar_shard([img2dataset_sample("b0", None)]))
    s3_client.put_object(Bucket=BUCKET, Key=f"{root}pq/00000.parquet", Body=image_table([("k", images.solid())]))
    return root


def test_a_dry_run_walks_the_shards_and_counts_rows_without_writing_anything(
    worker_env: dict[str, str], dataset: str, redis_client: redis_lib.Redis
) -> None:
    before = redis_client.zcard(BACKFILL_INDEX)
    done = guardq(
        worker_env, "backfill", f"s3://{BUCKET}/{dataset}wds/", "--format", "webdataset", "--dry-run", "--json"
    )
    summary = json.loads(done.stdout)
    assert 0 == done.exit_code, done.output
    # a0-a2 from the tar, b0 (no image: a failed row), a3 skipped as never downloaded
    assert ("dry-run", 5, 4, 1, 2) == (
        summary["state"],
        summary["listed"],
        summary["enqueued"],
        summary["skipped"],
        summary["shards"],
    )
    assert before == redis_client.zcard(BACKFILL_INDEX)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "csv"], "--format must be one of objects, webdataset, parquet, not 'csv'"),
        (["--format", "parquet"], "--format parquet needs exactly one of --image-column (image bytes) or --url-column"),
        (["--format", "parquet", "--image-column", "jpg", "--url-column", "url"], "needs exactly one of"),
        (["--format", "webdataset", "--image-column", "jpg"], "--image-column/--url-column are for --format parquet"),
        (["--image-column", "jpg"], "--image-column need --format parquet"),
        (["--results-format", "parquet"], "--results-format parquet writes one file per input shard"),
        (["--format", "webdataset", "--results-format", "parquet"], "--results-format parquet needs --results"),
        (["--format", "webdataset", "--results-format", "xml"], "--results-format must be jsonl or parquet"),
        (["--format", "parquet", "--image-column", "png"], "--image-column png: s3://guardq-test/"),
    ],
    ids=[
        "unknown-format",
        "no-column",
        "two-columns",
        "column-for-tars",
        "column-without-format",
        "parquet-results-for-objects",
        "parquet-results-without-location",
        "unknown-results-format",
        "missing-column",
    ],
)
def test_bad_dataset_options_are_refused_in_one_line_before_anything_is_created(
    worker_env: dict[str, str], dataset: str, redis_client: redis_lib.Redis, args: list[str], message: str
) -> None:
    before = redis_client.zcard(BACKFILL_INDEX)
    source = f"s3://{BUCKET}/{dataset}{'pq' if 'parquet' in args else 'wds'}/"
    done = guardq(worker_env, "backfill", source, *args)
    assert 2 == done.exit_code
    lines = done.stderr.strip().splitlines()
    assert 1 == len(lines) and message in lines[0], done.stderr
    assert before == redis_client.zcard(BACKFILL_INDEX)


def test_a_parquet_results_location_belongs_to_one_backfill(
    worker_env: dict[str, str], dataset: str, redis_client: redis_lib.Redis
) -> None:
    queue = f"guardq.test.{uuid.uuid4().hex[:8]}"
    results = f"s3://{BUCKET}/{dataset}owned-verdicts"
    args = ["--format", "webdataset", "--queue", queue, "--results", results, "--results-format", "parquet"]
    try:
        first = guardq(worker_env, "backfill", f"s3://{BUCKET}/{dataset}wds/", *args, "--json")
        assert 0 == first.exit_code, first.output
        owner = json.loads(first.stdout)["backfill_id"]
        second = guardq(worker_env, "backfill", f"s3://{BUCKET}/{dataset}wds/", *args)
        assert 2 == second.exit_code
        assert [
            f"guardq: --results {results} already holds the results of backfill {owner}; choose another prefix"
        ] == (second.stderr.strip().splitlines())
        jsonl = guardq(worker_env, "backfill", "report", owner, "--keep-list", "/dev/null")
        assert 1 == jsonl.exit_code  # its results are not written yet (no sink ran): said in one line
        assert "no " in jsonl.stderr and "_manifest.json" in jsonl.stderr
    finally:
        redis_client.delete(queue)


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[ImageSite, ImageSite]]:
    allowed, internal = ImageSite("127.0.0.2"), ImageSite("127.0.0.1")  # the test worker may reach 127.0.0.2 only
    yield allowed, internal
    allowed.close()
    internal.close()


def test_a_parquet_of_image_urls_is_fetched_behind_the_ssrf_guard_with_a_failed_row_per_bad_url(
    runner: Runner,
    worker_env: dict[str, str],
    settings: Settings,
    redis_client: redis_lib.Redis,
    s3_client: Any,
    sites: tuple[ImageSite, ImageSite],
) -> None:
    allowed, internal = sites
    prefix = f"dsurl-{uuid.uuid4().hex[:8]}/"
    rows: list[tuple[str, str | None]] = [
        ("u0", allowed.url("/cat.jpg")),
        ("u1", allowed.url("/missing.jpg")),
        ("u2", None),
        ("u3", "ftp://files.example/x.jpg"),
        ("u4", internal.url("/cat.jpg")),
        ("u5", "not a url at all"),
    ]
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}in/urls.parquet", Body=url_table(rows))
    results = f"s3://{BUCKET}/{prefix}verdicts"
    sink_settings = settings.model_copy(update={"results_batch_s": 0.3})
    with RunningSink(ResultsSink(redis_client, s3_client, sink_settings, consumer=f"url-{prefix[:-1]}")):
        args = ["--format", "parquet", "--url-column", "url", "--results", results, "--results-format", "parquet"]
        done = guardq(worker_env, "backfill", f"s3://{BUCKET}/{prefix}in/", *args, "--json")
        assert 0 == done.exit_code, done.output
        wait_until(lambda: (read_manifest(s3_client, results) or {}).get("complete") is True, 60, "results")

    manifest = read_manifest(s3_client, results)
    assert manifest is not None and [f"{prefix}in/urls.parquet"] == [s["shard"] for s in manifest["shards"]]
    got = read_results(s3_client, manifest["shards"][0]["object"]).to_pylist()
    assert {
        "u0": "Safe",
        "u1": "not_found",
        "u2": "not_found",
        "u3": "forbidden_source",
        "u4": "forbidden_source",
        "u5": "invalid_source",
    } == {r["key"]: r["error_code"] or r["rating"] for r in got}
    assert ["/cat.jpg", "/missing.jpg"] == sorted(allowed.hits)
    assert [] == internal.hits  # never connected to: the guard refused the address before any request
