"""``guardq backfill`` as users type it (both command forms, dry run, status, bad arguments), and S3 Inventory
manifests as the source of keys, against real SeaweedFS and Redis."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from producers.backfill.checkpoint import BackfillStore
from producers.backfill.manifest import read_manifest
from producers.broker import JobQueue
from producers.cli import app
from producers.rediskeys import BACKFILL_INDEX
from schemas.backfill import BackfillOptions
from schemas.errors import ConfigError
from schemas.models import DEFAULT_MODEL
from tests.conftest import BUCKET
from tests.producers.conftest import queued_jobs, reset_cli_state, upload
from tests.producers.test_backfill_integration import keys_of, run_backfill

pytestmark = pytest.mark.integration

Invoke = Callable[..., Result]


@pytest.fixture
def guardq(worker_env: dict[str, str]) -> Iterator[Invoke]:
    """Run ``guardq ...`` in-process against the test services (settings are read afresh for each call)."""

    def invoke(*args: str) -> Result:
        reset_cli_state()
        return CliRunner().invoke(app, list(args), env=worker_env)

    yield invoke
    reset_cli_state()


@pytest.fixture(scope="module")
def small_prefix(s3_client: Any) -> str:
    prefix = f"cli-{uuid.uuid4().hex[:8]}/"
    upload(s3_client, [f"{prefix}{i}.jpg" for i in range(5)] + [f"{prefix}{i}.txt" for i in range(2)])
    return prefix


def test_dry_run_counts_what_would_be_enqueued_and_writes_nothing(
    guardq: Invoke, small_prefix: str, job_queue: JobQueue
) -> None:
    before = job_queue.redis.zcard(BACKFILL_INDEX)
    result = guardq("backfill", "run", f"s3://{BUCKET}/{small_prefix}", "--include", "*.jpg", "--dry-run", "--json")

    summary = json.loads(result.stdout)
    assert 0 == result.exit_code, result.output
    assert ("dry-run", None, 7, 5, 2) == (
        summary["state"],
        summary["backfill_id"],
        summary["listed"],
        summary["enqueued"],
        summary["skipped"],
    )
    assert before == job_queue.redis.zcard(BACKFILL_INDEX)


def test_the_short_form_runs_a_backfill_and_status_reports_it(
    guardq: Invoke, small_prefix: str, job_queue: JobQueue
) -> None:
    queue = f"guardq.test.{uuid.uuid4().hex[:8]}"
    try:
        result = guardq("backfill", f"s3://{BUCKET}/{small_prefix}", "--queue", queue, "--include", "*.jpg")
        assert 0 == result.exit_code, result.output
        backfill_id = result.stdout.split()[1].rstrip(":")
        assert f"status: guardq backfill status {backfill_id}" in result.stdout
        assert 5 == len(queued_jobs(job_queue.redis, queue))

        status = guardq("backfill", "status", backfill_id, "--json")
        report = json.loads(status.stdout)
        assert 0 == status.exit_code, status.output
        assert (backfill_id, "finished", 7, 5, 2, 5, queue) == (
            report["backfill_id"],
            report["state"],
            report["listed"],
            report["enqueued"],
            report["skipped"],
            report["queue_depth"],
            report["queue"],
        )
        assert backfill_id in guardq("backfill", "list").stdout
    finally:
        job_queue.redis.delete(queue)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backfill", "http://example.com/x"], "is not an s3://bucket[/prefix] URL"),
        (["backfill", "s3://no-such-bucket-here/x"], "s3://no-such-bucket-here does not exist"),
        (
            ["backfill", "s3://guardq-test/x", "--policy", "never-stored"],
            "--policy never-stored: no stored policy 'never-stored'",
        ),
        (["backfill", "s3://guardq-test/x", "--tenant", "bad tenant!"], "tenant: String should match pattern"),
        (["backfill", "--resume", "bf-0000000000000000"], "no backfill 'bf-0000000000000000'"),
        (["backfill", "--resume", "bf-0000000000000000", "s3://guardq-test/x"], "--resume continues with the options"),
        (["backfill", "run"], "give either SOURCE"),
        (["backfill", "status", "bf-0000000000000000"], "no backfill 'bf-0000000000000000'"),
    ],
    ids=[
        "not-s3",
        "no-bucket",
        "unknown-policy",
        "bad-tenant",
        "unknown-resume",
        "resume-with-source",
        "no-source",
        "unknown-status",
    ],
)
def test_bad_arguments_exit_non_zero_with_one_clear_line(guardq: Invoke, args: list[str], message: str) -> None:
    result = guardq(*args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert message in lines[0]


def _csv_gz(rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL).writerows(rows)
    return gzip.compress(text.getvalue().encode())


def put_inventory(s3_client: Any, parts: list[list[list[str]]], *, bad_md5: bool = False, fmt: str = "CSV") -> str:
    """Write an S3 Inventory report (gzip CSV parts + manifest.json) the way S3 lays it out; return its URL."""
    base = f"inventory/{uuid.uuid4().hex[:8]}/{BUCKET}/cfg/2026-01-01T01-00Z"
    files = []
    for i, rows in enumerate(parts):
        body = _csv_gz(rows)
        key = f"inventory/data/{uuid.uuid4().hex}-{i}.csv.gz"
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=body)
        md5 = hashlib.md5(body).hexdigest() if not bad_md5 else "0" * 32
        files.append({"key": key, "size": len(body), "MD5checksum": md5})
    manifest = {
        "sourceBucket": BUCKET,
        "destinationBucket": f"arn:aws:s3:::{BUCKET}",
        "version": "2016-11-30",
        "fileFormat": fmt,
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, ETag",
        "files": files,
    }
    s3_client.put_object(Bucket=BUCKET, Key=f"{base}/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{BUCKET}/{base}/manifest.json"


INVENTORY = [
    [
        [BUCKET, "inv/red+flower.jpg", "", "true", "false", "100", "e1"],  # a space arrives as '+'
        [BUCKET, "inv/a%2Bb.jpg", "", "true", "false", "100", "e2"],  # a literal '+' arrives as %2B
        [BUCKET, "inv/gone.jpg", "", "true", "true", "", ""],  # delete marker: not moderated
        [BUCKET, "inv/big.jpg", "", "true", "false", "999999", "e3"],  # over --max-bytes
    ],
    [
        [BUCKET, "inv/%E6%97%A5%E6%9C%AC/%E7%8C%AB.jpg", "v2", "true", "false", "100", "e4"],  # UTF-8, versioned
        [BUCKET, "inv/%E6%97%A5%E6%9C%AC/%E7%8C%AB.jpg", "v1", "false", "false", "100", "e5"],  # not current
        [BUCKET, "inv/notes.txt", "", "true", "false", "10", "e6"],  # not *.jpg
    ],
]


def manifest_options(url: str, queue: str) -> BackfillOptions:
    return BackfillOptions(
        source=url,
        mode="manifest",
        bucket=BUCKET,
        include=["*.jpg"],
        max_bytes=1000,
        model=DEFAULT_MODEL,
        queue=queue,
    )


def test_an_inventory_manifest_is_read_decoded_filtered_and_enqueued(
    s3_client: Any, job_queue: JobQueue, private_queue: str
) -> None:
    url = put_inventory(s3_client, INVENTORY)
    record = BackfillStore(job_queue.redis).create(manifest_options(url, private_queue))

    state, _ = run_backfill(record, job_queue, s3_client, page_size=1)

    jobs = queued_jobs(job_queue.redis, private_queue)
    saved = BackfillStore(job_queue.redis).load(record.backfill_id).progress
    assert "finished" == state
    assert ["inv/red flower.jpg", "inv/a+b.jpg", "inv/日本/猫.jpg"] == keys_of(jobs)
    assert [None, None, "v2"] == [j["image"].get("version_id") for j in jobs]
    assert (5, 3, 1, 1) == (saved.listed, saved.enqueued, saved.skipped_include, saved.skipped_size)
    assert (1, 3) == (saved.manifest_file, saved.manifest_row)  # part 2 of 2, all 3 rows


def test_a_stopped_inventory_backfill_resumes_at_its_row_without_duplicates(
    s3_client: Any, job_queue: JobQueue, private_queue: str
) -> None:
    url = put_inventory(s3_client, INVENTORY)
    store = BackfillStore(job_queue.redis)
    record = store.create(manifest_options(url, private_queue))
    first, _ = run_backfill(record, job_queue, s3_client, page_size=1, stop_after=2)
    stopped = store.load(record.backfill_id)
    position = (stopped.progress.manifest_file, stopped.progress.manifest_row)
    second, _ = run_backfill(stopped, job_queue, s3_client, page_size=1)

    assert ("interrupted", "finished") == (first, second)
    assert (0, 2) == position  # part 1, after its second row
    assert ["inv/red flower.jpg", "inv/a+b.jpg", "inv/日本/猫.jpg"] == keys_of(
        queued_jobs(job_queue.redis, private_queue)
    )


def test_an_inventory_part_failing_its_md5_check_fails_the_backfill_with_that_reason(
    s3_client: Any, job_queue: JobQueue, private_queue: str
) -> None:
    url = put_inventory(s3_client, INVENTORY[:1], bad_md5=True)
    record = BackfillStore(job_queue.redis).create(manifest_options(url, private_queue))
    state, _ = run_backfill(record, job_queue, s3_client)
    saved = BackfillStore(job_queue.redis).load(record.backfill_id).progress
    assert "failed" == state
    assert "fails its MD5 check" in saved.error


def test_only_csv_inventories_are_accepted(s3_client: Any) -> None:
    url = put_inventory(s3_client, INVENTORY[:1], fmt="Parquet")
    with pytest.raises(ConfigError, match="inventory format PARQUET is not supported"):
        read_manifest(s3_client, url)


def test_a_second_runner_of_the_same_backfill_is_refused_while_the_first_holds_its_lease(
    guardq: Invoke, job_queue: JobQueue, small_prefix: str, private_queue: str
) -> None:
    from producers.backfill.checkpoint import RunLease

    record = BackfillStore(job_queue.redis).create(
        BackfillOptions(
            source=f"s3://{BUCKET}/{small_prefix}",
            mode="list",
            bucket=BUCKET,
            prefix=small_prefix,
            model=DEFAULT_MODEL,
            queue=private_queue,
        )
    )
    lease = RunLease(job_queue.redis, record.backfill_id, ttl_s=30)
    lease.acquire()
    try:
        result = guardq("backfill", "--resume", record.backfill_id)
    finally:
        lease.release()
    assert 2 == result.exit_code
    assert "backfill is already running in" in result.stderr


def test_a_lapsed_run_lease_is_taken_back_and_a_lease_taken_by_another_runner_stops_this_one(
    job_queue: JobQueue,
) -> None:
    from producers.backfill.checkpoint import RunLease
    from producers.rediskeys import backfill_lock_key

    backfill_id = f"bf-{uuid.uuid4().hex[:16]}"
    lease = RunLease(job_queue.redis, backfill_id, ttl_s=30)
    lease.acquire()
    job_queue.redis.delete(backfill_lock_key(backfill_id))  # expired during a long pause
    lease.refresh()
    assert lease.value == lease.held_by()

    job_queue.redis.set(backfill_lock_key(backfill_id), "elsewhere:1:x")
    with pytest.raises(ConfigError, match="lost the run lease to elsewhere:1:x"):
        lease.refresh()
    job_queue.redis.delete(backfill_lock_key(backfill_id))
