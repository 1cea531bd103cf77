"""The S3 JSONL results sink and the backfill report against real Redis, a real worker and SeaweedFS S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas.job import ImageRef, ModerationJob
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET, Runner
from tests.services.procs import ROOT, wait_until
from tests.worker.delivery.factory import make_event, publish
from worker.delivery.keys import RESULTS_PENDING
from worker.delivery.results.sink import ResultsSink
from worker.delivery.results.targets import register_results

pytestmark = pytest.mark.integration


class Crash(Exception):
    """Stands for the process dying at a chosen point."""


def objects(s3_client: Any, backfill: str) -> dict[str, list[dict[str, Any]]]:
    """Every results object of the backfill: key -> parsed lines."""
    out = {}
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"results/{backfill}/")
    for obj in listing.get("Contents", []):
        body = s3_client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
        out[obj["Key"]] = [json.loads(line) for line in body.splitlines()]
    return out


def event_ids(found: dict[str, list[dict[str, Any]]]) -> Counter[str]:
    return Counter(line["id"] for lines in found.values() for line in lines)


@pytest.fixture
def backfill(redis_client: redis.Redis) -> str:
    name = f"bf-{uuid.uuid4().hex[:10]}"
    register_results(redis_client, name, f"s3://{BUCKET}/results")
    return name


@pytest.fixture
def sink_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"results_batch_events": 3, "results_batch_s": 0.3})


class RunningSink:
    """A sink looping in a thread until stopped (then it flushes, like on SIGTERM)."""

    def __init__(self, sink: ResultsSink) -> None:
        self.sink = sink
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=sink.run, kwargs={"should_stop": self.stop_flag.is_set}, daemon=True)

    def __enter__(self) -> ResultsSink:
        self.sink.start()
        self.thread.start()
        return self.sink

    def __exit__(self, *_: object) -> None:
        self.stop_flag.set()
        self.thread.join(10)


def test_every_verdict_of_a_backfill_lands_in_jsonl_objects_exactly_once(
    runner: Runner, backfill: str, redis_client: redis.Redis, s3_client: Any, sink_settings: Settings
) -> None:
    keys = []
    for i in range(7):
        key = f"bf/{uuid.uuid4().hex}.jpg"
        if i != 3:  # one missing object: its failed event belongs to the results too
            s3_client.put_object(Bucket=BUCKET, Key=key, Body=images.solid((220, 30, 30) if i % 2 else (40, 120, 200)))
        keys.append(key)
    jobs = [ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/{k}"), backfill_id=backfill) for k in keys]
    other = ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/{keys[0]}"))  # not part of the backfill
    with RunningSink(ResultsSink(redis_client, s3_client, sink_settings, consumer="it-1")):
        events = runner.run(*jobs, other)
        wait_until(lambda: sum(event_ids(objects(s3_client, backfill)).values()) >= 7, 15, "results objects")
    found = objects(s3_client, backfill)
    assert {events[j.job_id].id: 1 for j in jobs} == dict(event_ids(found))
    assert len(found) >= 3  # batched by count (3 per object), not one object per verdict
    assert all(key.endswith(".jsonl") and "/part-" in key for key in found)
    lines = [line for part in found.values() for line in part]
    assert {"guardq.moderation.failed": 1, "guardq.moderation.completed": 6} == dict(Counter(x["type"] for x in lines))
    assert 0 == redis_client.hlen(RESULTS_PENDING)


def test_an_event_on_the_stream_twice_is_written_once(
    backfill: str, redis_client: redis.Redis, s3_client: Any, sink_settings: Settings
) -> None:
    event = make_event(backfill_id=backfill)
    with RunningSink(ResultsSink(redis_client, s3_client, sink_settings, consumer="dup")) as sink:
        publish(redis_client, event)
        publish(redis_client, event)
        publish(redis_client, last := make_event(backfill_id=backfill))
        wait_until(lambda: last.id in event_ids(objects(s3_client, backfill)), 15, "results")
        wait_until(lambda: 0 == redis_client.xpending("guardq:verdicts", "guardq.results")["pending"], 10, "acks")
        assert sink.objects_written >= 1
    assert {event.id: 1, last.id: 1} == dict(event_ids(objects(s3_client, backfill)))


class CrashingSink(ResultsSink):
    """Dies right after the S3 PUT (before the ack) or right before it (after writing the part ahead)."""

    def __init__(self, *args: Any, crash: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash = crash

    def _put_and_confirm(self, part: str, body: bytes, stream_ids: list[str]) -> None:
        if self.crash == "before-put":
            raise Crash
        bucket, _, key = part[5:].partition("/")
        self.s3.put_object(Bucket=bucket, Key=key, Body=body)
        raise Crash


@pytest.mark.parametrize("crash", ["after-put", "before-put"])
def test_a_sink_that_dies_mid_flush_leaves_every_event_exactly_once_after_a_restart(
    crash: str, backfill: str, redis_client: redis.Redis, s3_client: Any, sink_settings: Settings
) -> None:
    settings = sink_settings.model_copy(update={"results_batch_events": 2, "results_batch_s": 60})
    sent = [make_event(backfill_id=backfill) for _ in range(4)]
    doomed = CrashingSink(redis_client, s3_client, settings, consumer=f"crashy-{crash}", crash=crash)
    doomed.start()
    for event in sent:
        publish(redis_client, event)

    def run_until_crash() -> None:
        for _ in range(20):  # bounded: read until the first full batch is flushed (and the "process" dies)
            doomed.step()

    with pytest.raises(Crash):
        run_until_crash()
    assert 1 == len(redis_client.hkeys(RESULTS_PENDING)) // 2  # the part written ahead, not yet confirmed

    restarted = ResultsSink(redis_client, s3_client, settings, consumer=f"crashy-{crash}")
    restarted.start()  # finishes the pending part, then re-reads its own unacked entries (already claimed)
    for _ in range(5):
        restarted.step()
    restarted.flush()
    assert {e.id: 1 for e in sent} == dict(event_ids(objects(s3_client, backfill)))
    assert 0 == redis_client.hlen(RESULTS_PENDING)


def test_stopping_the_sink_flushes_what_it_buffered(
    backfill: str, redis_client: redis.Redis, s3_client: Any, sink_settings: Settings
) -> None:
    slow = sink_settings.model_copy(update={"results_batch_events": 1000, "results_batch_s": 3600})
    sink = ResultsSink(redis_client, s3_client, slow, consumer="flush")
    event = make_event(backfill_id=backfill)
    with RunningSink(sink):
        publish(redis_client, event)
        wait_until(lambda: bool(sink._buffers), 10, "event buffered")
        assert {} == objects(s3_client, backfill)
    assert {event.id: 1} == dict(event_ids(objects(s3_client, backfill)))


def guardq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "guardq"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=30, check=False, cwd=ROOT
    )


def test_the_report_counts_by_rating_and_category_and_writes_one_csv_row_per_image(
    backfill: str,
    redis_client: redis.Redis,
    s3_client: Any,
    sink_settings: Settings,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    sent = [
        make_event(backfill_id=backfill),
        make_event(backfill_id=backfill),
        make_event(backfill_id=backfill, rating="Unsafe", category="O2: Violence, Harm, or Cruelty"),
        make_event(backfill_id=backfill, failed=True),
    ]
    with RunningSink(ResultsSink(redis_client, s3_client, sink_settings, consumer="report")):
        for event in sent:
            publish(redis_client, event)
        wait_until(lambda: 4 == sum(event_ids(objects(s3_client, backfill)).values()), 15, "results")

    out = tmp_path / "report.csv"
    done = guardq("results", "report", backfill, "--csv", str(out), "--json", env=worker_env)
    assert 0 == done.returncode, done.stderr
    summary = json.loads(done.stdout)
    assert {"Safe": 2, "Unsafe": 1} == summary["ratings"]
    assert {"NA: None applying": 2, "O2: Violence, Harm, or Cruelty": 1} == summary["categories"]
    assert {"not_found": 1} == summary["errors"]
    assert (4, 0) == (summary["events"], summary["duplicates"])
    rows = out.read_text().splitlines()
    assert 5 == len(rows)
    assert rows[0].startswith("event_id,job_id,type,image_uri")

    table = guardq("results", "report", backfill, env=worker_env)
    assert 0 == table.returncode
    assert f"backfill {backfill}: 4 events in" in table.stdout


def test_the_report_of_an_unknown_backfill_fails_in_one_line(worker_env: dict[str, str]) -> None:
    done = guardq("results", "report", "no-such-backfill", env=worker_env)
    assert 1 == done.returncode
    assert 1 == len(done.stderr.strip().splitlines())
    assert done.stderr.startswith("guardq: no results location for backfill 'no-such-backfill'")
