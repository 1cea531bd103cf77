"""``guardq backfill … --results s3://…`` end to end: the backfill registers its results location before its first
job, the real worker moderates every object, the results sink writes the verdicts to SeaweedFS, and
``guardq backfill report`` counts exactly those verdicts by rating and category (and writes the CSV)."""

from __future__ import annotations

import csv
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from typer.testing import CliRunner, Result

from producers.backfill.runner import backfill_job_id
from producers.backfill.sources import ObjectEntry
from producers.cli import app
from producers.rediskeys import BACKFILL_INDEX
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET, Runner
from tests.producers.conftest import reset_cli_state
from tests.services.procs import wait_until
from tests.worker.delivery.test_results_integration import RunningSink, event_ids, objects
from worker.delivery.results.sink import ResultsSink
from worker.delivery.results.targets import results_uri
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration

RED, BLUE, DARK = (220, 30, 30), (40, 120, 200), (30, 30, 30)  # the SGLang test server: O2, Safe NA, O9


def guardq(env: dict[str, str], *args: str) -> Result:
    reset_cli_state()
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        reset_cli_state()


def test_a_backfill_with_results_is_reported_by_rating_and_category_from_its_jsonl_objects(
    runner: Runner,
    worker_env: dict[str, str],
    settings: Settings,
    redis_client: redis_lib.Redis,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    prefix = f"bfr-{uuid.uuid4().hex[:8]}/"
    bodies = {"a.jpg": RED, "b.jpg": BLUE, "c.jpg": BLUE, "d.jpg": DARK, "e.jpg": BLUE}
    for name, color in bodies.items():
        s3_client.put_object(Bucket=BUCKET, Key=prefix + name, Body=images.solid(color))
    s3_client.put_object(Bucket=BUCKET, Key=prefix + "f.jpg", Body=b"not an image at all")  # a failed job
    results = f"s3://{BUCKET}/results"
    start = runner.queue.redis.xrevrange("guardq:verdicts", count=1)
    after = start[0][0].decode() if start else "0-0"
    sink_settings = settings.model_copy(update={"results_batch_events": 4, "results_batch_s": 0.3})

    with RunningSink(ResultsSink(redis_client, s3_client, sink_settings, consumer=f"e2e-{prefix[:-1]}")):
        done = guardq(worker_env, "backfill", f"s3://{BUCKET}/{prefix}", "--results", results, "--json")
        assert 0 == done.exit_code, done.output
        summary = json.loads(done.stdout)
        backfill = summary["backfill_id"]
        assert (6, "finished") == (summary["enqueued"], summary["state"])
        assert results == results_uri(redis_client, settings, backfill)  # registered for the sink
        ids = [backfill_job_id(backfill, ObjectEntry(BUCKET, prefix + name)) for name in sorted([*bodies, "f.jpg"])]
        events = list(wait_for(redis_client, ids, after=after, timeout_s=60))  # moderated by the real worker
        assert 6 == len(events)
        wait_until(lambda: 6 == sum(event_ids(objects(s3_client, backfill)).values()), 15, "results objects")

    assert {e.id: 1 for e in events} == dict(event_ids(objects(s3_client, backfill)))  # each verdict once
    completed = [e for e in events if e.data.verdict is not None]
    out = tmp_path / "report.csv"
    report = guardq(worker_env, "backfill", "report", backfill, "--csv", str(out), "--json")
    assert 0 == report.exit_code, report.output
    counts = json.loads(report.stdout)
    assert {"Safe": 3, "Unsafe": 2} == counts["ratings"]
    assert dict(Counter(e.data.verdict.category for e in completed if e.data.verdict)) == counts["categories"]
    assert {"NA: None applying": 3, "O2: Violence, Harm, or Cruelty": 1, "O9: Disasters or Emergencies": 1} == (
        counts["categories"]
    )
    failed = Counter(e.data.error.code.value for e in events if e.data.error is not None)
    assert (1, dict(failed)) == (sum(failed.values()), counts["errors"])
    rows = list(csv.DictReader(out.open()))
    assert sorted(ids) == sorted(row["job_id"] for row in rows)
    assert Counter(row["rating"] for row in rows if row["rating"]) == Counter(counts["ratings"])

    same = guardq(worker_env, "results", "report", backfill, "--json")  # one report, two names
    assert (0, counts) == (same.exit_code, json.loads(same.stdout))
    status = guardq(worker_env, "backfill", "status", backfill, "--json")
    assert results == json.loads(status.stdout)["results"]


def test_a_results_location_whose_bucket_does_not_exist_is_refused_before_anything_is_created(
    worker_env: dict[str, str], redis_client: redis_lib.Redis
) -> None:
    before = redis_client.zcard(BACKFILL_INDEX)
    done = guardq(worker_env, "backfill", f"s3://{BUCKET}/x/", "--results", "s3://no-such-bucket-here/r", "--json")
    assert 2 == done.exit_code
    assert ["guardq: results bucket s3://no-such-bucket-here does not exist"] == done.stderr.strip().splitlines()
    assert before == redis_client.zcard(BACKFILL_INDEX)
