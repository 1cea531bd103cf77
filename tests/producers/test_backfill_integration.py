"""Backfill against real SeaweedFS and real Redis: exactly-once enqueue across pages, crash and resume, filters,
backpressure under a real draining worker, and verdict counts per backfill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from producers.backfill.checkpoint import BackfillStore, RunLease
from producers.backfill.runner import BackfillRunner, Snapshot, backfill_job_id
from producers.backfill.session import execute
from producers.backfill.sources import ObjectEntry
from producers.backfill.status import backfill_status
from producers.broker import JobQueue
from schemas.backfill import BackfillOptions, BackfillRecord
from schemas.job import ImageRef, ModerationJob, Priority
from schemas.keys import job_key, open_jobs_key, queue_name
from schemas.models import DEFAULT_MODEL, get_model
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET, Runner
from tests.producers.conftest import Prefix, queued_jobs, sampled_peak_depth, upload
from tests.services.procs import ROOT, wait_until
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration


class Recorder:
    """A progress reporter that keeps every snapshot and can ask the run to stop after ``stop_after`` jobs."""

    def __init__(self, stop: threading.Event | None = None, stop_after: int | None = None) -> None:
        self.snapshots: list[Snapshot] = []
        self._stop = stop
        self._stop_after = stop_after

    def update(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        if self._stop is not None and self._stop_after is not None and snapshot.enqueued >= self._stop_after:
            self._stop.set()


def options_for(prefix: Prefix, queue: str, **kw: Any) -> BackfillOptions:
    return BackfillOptions(
        source=prefix.url,
        mode="list",
        bucket=prefix.bucket,
        prefix=prefix.prefix,
        model=DEFAULT_MODEL,
        queue=queue,
        **kw,
    )


def run_backfill(
    record: BackfillRecord,
    job_queue: JobQueue,
    s3_client: Any,
    *,
    page_size: int = 300,
    max_pending: int = 100_000,
    stop_after: int | None = None,
    report_every_s: float = 0.0,
) -> tuple[str, BackfillRunner]:
    store = BackfillStore(job_queue.redis)
    lease = RunLease(job_queue.redis, record.backfill_id, ttl_s=30)
    lease.acquire()
    stop = threading.Event()
    runner = BackfillRunner(
        record,
        s3=s3_client,
        queue=job_queue,
        store=store,
        lease=lease,
        max_pending=max_pending,
        page_size=page_size,
        stop=stop,
        reporter=Recorder(stop, stop_after),
        report_every_s=report_every_s,
    )
    return execute(runner, store, lease).state, runner


def resume_sends_the_rest(
    record: BackfillRecord, job_queue: JobQueue, s3_client: Any, prefix: Prefix, queue: str, *, already: int
) -> None:
    """Resuming ``record`` finishes the backfill: every key queued once, in order, sending only what was not sent."""
    state, runner = run_backfill(record, job_queue, s3_client, page_size=300)
    assert "finished" == state
    assert list(prefix.keys) == keys_of(queued_jobs(job_queue.redis, queue))
    assert len(prefix.keys) - already == runner.stats.enqueued_this_run
    assert len(prefix.keys) == BackfillStore(job_queue.redis).load(record.backfill_id).progress.enqueued


def keys_of(jobs: list[dict[str, Any]], bucket: str = BUCKET) -> list[str]:
    return [job["image"]["uri"][len(f"s3://{bucket}/") :] for job in jobs]


def cli_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **worker_env, "GUARDQ_LOG_FORMAT": "json"}


GUARDQ = str(Path(sys.executable).parent / "guardq")


def guardq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GUARDQ, *args], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def backfill_filling(client: redis_lib.Redis, queue: str) -> str:
    """The id of the newest backfill whose jobs go to ``queue``."""
    store = BackfillStore(client)
    return next(bid for bid in store.recent(50) if store.load(bid).options.queue == queue)


def test_a_backfill_enqueues_each_key_of_a_prefix_exactly_once_across_many_pages(
    bulk_prefix: Prefix, job_queue: JobQueue, s3_client: Any, private_queue: str
) -> None:
    calls = Counter[str]()
    hook = lambda **_: calls.update(["list"])  # noqa: E731 - counts real ListObjectsV2 requests
    s3_client.meta.events.register("after-call.s3.ListObjectsV2", hook)
    try:
        record = BackfillStore(job_queue.redis).create(options_for(bulk_prefix, private_queue, tenant="acme"))
        state, runner = run_backfill(record, job_queue, s3_client, page_size=300)
    finally:
        s3_client.meta.events.unregister("after-call.s3.ListObjectsV2", hook)

    jobs = queued_jobs(job_queue.redis, private_queue)
    assert "finished" == state
    assert list(bulk_prefix.keys) == keys_of(jobs)  # every key once, in listing order
    assert len(bulk_prefix.keys) == len({j["job_id"] for j in jobs})
    assert {record.backfill_id} == {j["backfill_id"] for j in jobs}
    assert {"bulk"} == {j["priority"] for j in jobs}
    assert {"acme"} == {j["tenant"] for j in jobs}
    assert 7 == calls["list"]  # 2,000 keys in pages of 300
    saved = BackfillStore(job_queue.redis).load(record.backfill_id)
    assert (2000, 2000, 0, "finished") == (
        saved.progress.listed,
        saved.progress.enqueued,
        saved.progress.skipped,
        saved.progress.state,
    )
    assert saved.progress.last_key == bulk_prefix.keys[-1]
    assert 2000 == runner.stats.enqueued_this_run


def test_a_stopped_backfill_checkpoints_and_its_resume_enqueues_only_the_rest(
    bulk_prefix: Prefix, job_queue: JobQueue, s3_client: Any, private_queue: str
) -> None:
    store = BackfillStore(job_queue.redis)
    record = store.create(options_for(bulk_prefix, private_queue))
    state, _ = run_backfill(record, job_queue, s3_client, page_size=250, stop_after=700)
    first = len(queued_jobs(job_queue.redis, private_queue))
    stopped = store.load(record.backfill_id)

    assert "interrupted" == state
    assert 700 <= first < 2000
    assert first == stopped.progress.enqueued
    assert bulk_prefix.keys[first - 1] == stopped.progress.last_key

    resume_sends_the_rest(stopped, job_queue, s3_client, bulk_prefix, private_queue, already=first)


class FailingQueue(JobQueue):
    """A queue whose ``fail_at``-th batch never reaches Redis (the connection dies before the transaction runs)."""

    def __init__(self, settings: Settings, fail_at: int) -> None:
        super().__init__(settings)
        self.calls = 0
        self.fail_at = fail_at

    def send_many(self, jobs: Any, **kw: Any) -> list[str]:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise redis_lib.ConnectionError("connection lost before EXEC (test)")
        return super().send_many(jobs, **kw)


def test_a_batch_that_never_reached_redis_is_not_checkpointed_and_the_resume_sends_it_once(
    bulk_prefix: Prefix, job_queue: JobQueue, s3_client: Any, private_queue: str
) -> None:
    """Jobs, messages and the cursor that covers them go in one transaction: when a batch is lost, the final
    checkpoint stays at the last batch that landed, and the resumed run sends everything else exactly once."""
    store = BackfillStore(job_queue.redis)
    record = store.create(options_for(bulk_prefix, private_queue))
    failing = FailingQueue(job_queue.settings, fail_at=4)
    with pytest.raises(redis_lib.ConnectionError):  # not a guardq error: recorded, then raised to the CLI
        run_backfill(record, failing, s3_client, page_size=300)
    failing.close()
    landed = len(queued_jobs(job_queue.redis, private_queue))
    saved = store.load(record.backfill_id)

    assert "failed" == saved.progress.state
    assert "connection lost" in saved.progress.error
    assert 0 < landed < 2000
    assert landed == saved.progress.enqueued == saved.progress.listed
    assert bulk_prefix.keys[landed - 1] == saved.progress.last_key

    resume_sends_the_rest(saved, job_queue, s3_client, bulk_prefix, private_queue, already=landed)


def test_one_batch_is_one_transaction_holding_the_jobs_records_messages_and_cursor(
    job_queue: JobQueue, redis_client: redis_lib.Redis, private_queue: str
) -> None:
    """send_many either lands every record, open-jobs entry and message, or none: a transaction that fails at
    EXEC (here: a command the server rejects while queuing) leaves nothing behind."""
    jobs = [ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/tx/{i}.jpg")) for i in range(5)]

    def broken(pipe: Any) -> None:
        pipe.execute_command("NO-SUCH-COMMAND")

    with pytest.raises(redis_lib.ResponseError):
        job_queue.send_many(jobs, queue=private_queue, also=broken)
    assert 0 == redis_client.llen(private_queue)
    assert not any(redis_client.exists(job_key(j.job_id)) for j in jobs)
    assert all(redis_client.zscore(open_jobs_key(private_queue), j.job_id) is None for j in jobs)

    job_queue.send_many(jobs, queue=private_queue)
    assert [j.job_id for j in jobs] == [m["job_id"] for m in queued_jobs(redis_client, private_queue)]
    assert all(redis_client.zscore(open_jobs_key(private_queue), j.job_id) is not None for j in jobs)


def test_a_backfill_killed_with_sigkill_resumes_from_its_checkpoint_without_duplicates(
    bulk_prefix: Prefix, worker_env: dict[str, str], redis_client: redis_lib.Redis, private_queue: str
) -> None:
    env = cli_env(worker_env)
    args = [bulk_prefix.url, "--queue", private_queue, "--page-size", "200", "--json"]
    proc = subprocess.Popen(
        [GUARDQ, "backfill", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: redis_client.llen(private_queue) >= 500, 60, "backfill under way", proc)  # type: ignore[arg-type]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    backfill_id = backfill_filling(redis_client, private_queue)
    killed_at = len(queued_jobs(redis_client, private_queue))
    assert 500 <= killed_at < 2000, stderr

    resumed = guardq("backfill", "--resume", backfill_id, "--json", env=env)
    assert 0 == resumed.returncode, resumed.stderr
    summary = json.loads(resumed.stdout)
    jobs = queued_jobs(redis_client, private_queue)
    assert list(bulk_prefix.keys) == keys_of(jobs)  # the rest, and nothing twice
    assert len(jobs) == len({j["job_id"] for j in jobs})
    assert (backfill_id, "finished", 2000) == (summary["backfill_id"], summary["state"], summary["enqueued"])
    assert 2000 - killed_at == summary["enqueued_this_run"]
    assert '"event": "backfill_progress"' in resumed.stderr  # not a TTY: plain structured progress lines
    assert [backfill_job_id(backfill_id, ObjectEntry(BUCKET, k)) for k in bulk_prefix.keys] == [
        j["job_id"] for j in jobs
    ]


def test_include_globs_max_bytes_and_folder_markers_are_skipped_and_counted(
    job_queue: JobQueue, s3_client: Any, private_queue: str
) -> None:
    prefix = f"filters-{uuid.uuid4().hex[:8]}/"
    small = [f"{prefix}a.jpg", f"{prefix}sub/B.JPG", f"{prefix}c.png"]
    upload(s3_client, small)
    upload(s3_client, [f"{prefix}notes.txt"])
    upload(s3_client, [f"{prefix}huge.jpg"], body=b"\xff" * 5000)
    upload(s3_client, [f"{prefix}folder/"], body=b"")
    opts = options_for(Prefix(BUCKET, prefix, ()), private_queue, include=["*.jpg", "*.png"], max_bytes=1000)
    record = BackfillStore(job_queue.redis).create(opts)

    state, _ = run_backfill(record, job_queue, s3_client, page_size=2)

    saved = BackfillStore(job_queue.redis).load(record.backfill_id).progress
    assert "finished" == state
    assert sorted(small) == sorted(keys_of(queued_jobs(job_queue.redis, private_queue)))
    assert (6, 3, 1, 1, 1) == (
        saved.listed,
        saved.enqueued,
        saved.skipped_include,
        saved.skipped_size,
        saved.skipped_other,
    )


def test_backpressure_keeps_the_queue_at_or_under_the_cap_while_a_real_worker_drains_it(
    runner: Runner, job_queue: JobQueue, s3_client: Any, settings: Settings
) -> None:
    """300 real images, --max-pending 40: the queue depth sampled every few ms never exceeds 40, the producer had
    to wait for the worker, and every job ends in one event that the backfill's status counts."""
    prefix = f"bp-{uuid.uuid4().hex[:8]}/"
    keys = [f"{prefix}{i:04d}.jpg" for i in range(300)]
    upload(s3_client, keys, body=images.solid())
    queue = queue_name(get_model(settings.model), Priority.BULK)
    record = BackfillStore(job_queue.redis).create(options_for(Prefix(BUCKET, prefix, ()), queue))
    start_id = job_queue.redis.xrevrange("guardq:verdicts", count=1)
    with sampled_peak_depth(settings.redis_url, queue) as peak:
        state, bf = run_backfill(record, job_queue, s3_client, page_size=100, max_pending=40)

    assert "finished" == state
    assert peak.value <= 40, f"queue depth reached {peak.value}"
    assert bf.stats.peak_depth <= 40
    assert bf.stats.waits > 0  # the cap was reached and the producer waited for the worker
    ids = [backfill_job_id(record.backfill_id, ObjectEntry(BUCKET, k)) for k in keys]
    after = start_id[0][0].decode() if start_id else "0-0"
    events = list(wait_for(job_queue.redis, ids, after=after, timeout_s=60))
    assert 300 == len(events)
    report = backfill_status(job_queue.redis, record.backfill_id)
    assert (300, 300, 0, 0, "finished") == (
        report["enqueued"],
        report["completed"],
        report["failed"],
        report["in_flight"],
        report["state"],
    )
    assert {record.backfill_id} == {e.data.backfill_id for e in events}


def test_sigterm_while_waiting_at_the_cap_stops_cleanly_and_the_resume_finishes(
    bulk_prefix: Prefix, worker_env: dict[str, str], redis_client: redis_lib.Redis, private_queue: str
) -> None:
    """Nobody drains this queue: the backfill fills it to --max-pending and waits; SIGTERM ends the wait at once."""
    env = cli_env(worker_env)
    args = ["backfill", "run", bulk_prefix.url, "--queue", private_queue, "--max-pending", "50", "--json"]
    proc = subprocess.Popen(
        [GUARDQ, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: redis_client.llen(private_queue) >= 50, 60, "backfill at its cap", proc)  # type: ignore[arg-type]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    summary = json.loads(stdout)
    assert 130 == proc.returncode, stderr
    assert ("interrupted", "stopped by SIGTERM", 50) == (summary["state"], summary["error"], summary["enqueued"])
    assert 50 == redis_client.llen(private_queue)  # the cap held
    record = BackfillStore(redis_client).load(summary["backfill_id"])
    assert ("interrupted", 50) == (record.progress.state, record.progress.enqueued)

    resumed = guardq("backfill", "--resume", summary["backfill_id"], "--max-pending", "100000", "--json", env=env)
    assert 0 == resumed.returncode, resumed.stderr
    assert list(bulk_prefix.keys) == keys_of(queued_jobs(redis_client, private_queue))
