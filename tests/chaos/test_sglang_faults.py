"""SGLang misbehaving in every way we know: each fault is retried or failed with its own code, never waited on forever.

Designed outcomes (worker/inference/sglang.py, worker/retry.py, docs/fleet.md):
- 503 (queue full), 5xx, 429, a dropped connection, a hang past ``GUARDQ_SGLANG_TIMEOUT_S``: transient; the job is
  retried with backoff and completes once the server answers, or fails ``inference_unavailable`` /
  ``inference_timeout`` (``retryable: true``) when ``GUARDQ_MAX_RETRIES`` retries are spent;
- invalid JSON or a truncated verdict (``finish_reason: length``): re-requested ``GUARDQ_INVALID_OUTPUT_RETRIES``
  times within the attempt, then ``invalid_model_output``; a 400 is ``inference_rejected`` at once;
- connection refused (the server is gone): the worker's server watch pauses consumption; queued jobs wait, jobs in
  flight retry, and everything completes once a server listens on the port again — nothing fails, nothing is lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from producers.uploads import UploadStore
from schemas.events import CloudEvent
from schemas.job import ModerationJob
from schemas.keys import FLEET_NODES, fleet_node_key
from schemas.settings import Settings
from tests import images
from tests.chaos.cluster import Cluster
from tests.chaos.ledger import record, tally, worker_settings
from tests.conftest import Runner
from tests.services.procs import wait_until
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration
HANG_S = 4  # longer than the shared worker's 2 s client timeout; short so the server thread frees itself soon
RETRIES = 3  # GUARDQ_MAX_RETRIES of the shared test worker: a persistent fault costs 1 + 3 attempts

# (case, faults queued on the server, expected code or None for completed, attempts, chat requests)
CASES: list[tuple[str, list[dict[str, Any]], str | None, int, int]] = [
    ("503 queue full, then success", [{"status": 503, "message": "The request queue is full"}] * 2, None, 3, 3),
    ("429 with Retry-After, then success", [{"status": 429, "retry_after": 1}], None, 2, 2),
    ("persistent 500", [{"status": 500}] * (RETRIES + 1), "inference_unavailable", RETRIES + 1, RETRIES + 1),
    ("connection dropped mid-request, then success", [{"kind": "drop"}], None, 2, 2),
    ("hang past the client timeout, then success", [{"kind": "hang", "seconds": HANG_S}], None, 2, 2),
    ("hangs every time", [{"kind": "hang", "seconds": HANG_S}] * (RETRIES + 1), "inference_timeout", 4, 4),
    ("invalid JSON, then valid", [{"kind": "invalid_json"}], None, 1, 2),
    ("invalid JSON twice", [{"kind": "invalid_json"}] * 2, "invalid_model_output", 1, 2),
    ("truncated output (finish_reason length) twice", [{"kind": "length"}] * 2, "invalid_model_output", 1, 2),
    ("400 bad request", [{"status": 400, "message": "bad request"}], "inference_rejected", 1, 1),
]


def upload_job(settings: Settings, seed: int) -> ModerationJob:
    return ModerationJob(image=UploadStore(settings).put(images.solid((seed % 200, 90, 160), (64 + seed, 48))))


@pytest.mark.parametrize(("case", "faults", "code", "attempts", "requests"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.timeout(60)
def test_each_sglang_fault_is_retried_or_failed_with_its_own_code(
    runner: Runner,
    sim: SimulatedSGLang,
    settings: Settings,
    case: str,
    faults: list[dict[str, Any]],
    code: str | None,
    attempts: int,
    requests: int,
) -> None:
    job = upload_job(settings, CASES.index((case, faults, code, attempts, requests)))
    sim.add_faults(*faults)
    started = time.monotonic()
    event = runner.one(job, timeout_s=45)
    seconds = round(time.monotonic() - started, 2)
    result = tally(runner.queue.redis, [job.job_id], scenario="sglang_faults", variant=case)
    result.seconds = seconds
    result.extra = {"chat_requests": len(sim.chat_requests()), "settings": worker_settings(settings)}
    record(result)
    assert code == (event.data.error.code.value if event.data.error else None)
    if event.data.error is not None:
        assert attempts == event.data.error.attempts
        assert (code in {"inference_unavailable", "inference_timeout"}) == event.data.error.retryable
    assert requests == len(sim.chat_requests())
    assert [event.id] == [e.id for e in runner.events_for(job.job_id)]


@pytest.mark.parametrize(
    ("jobs", "defaults"),
    [
        pytest.param(60, False, id="fast"),
        pytest.param(600, False, id="full", marks=pytest.mark.chaos),
        pytest.param(200, True, id="production-defaults", marks=pytest.mark.chaos),
    ],
)
@pytest.mark.timeout(300)
def test_with_the_server_gone_jobs_wait_and_complete_once_it_is_back(
    cluster_factory: type[Cluster], tmp_path: Path, jobs: int, defaults: bool
) -> None:
    """Connection refused: the server is stopped mid-run and a new one started on the same port later."""
    watch = {} if defaults else {"GUARDQ_SERVER_WATCH_INTERVAL_S": "0.5", "GUARDQ_HEARTBEAT_INTERVAL_S": "0.5"}
    cluster = cluster_factory(tmp_path, visibility_timeout_s=30, env_extra=watch, production_defaults=defaults)
    cluster.start(workers=2, latency_s=0.05, jitter_s=0.1)
    assert cluster.sim is not None
    port = int(cluster.sim.url.rsplit(":", 1)[1])
    batch = cluster.jobs(jobs, seed=jobs + 1)
    ids = [j.job_id for j in batch]
    started = time.monotonic()
    after = cluster.send(batch)
    assert jobs // 4 == len(first_events(cluster, ids, after, count=jobs // 4))
    cluster.sim.stop()  # connection refused from now on
    down_at = time.monotonic()
    wait_until(lambda: all_paused(cluster), 20, "every worker reports its server down and stops consuming")
    finished_while_down = cluster.queue.redis.xlen("guardq:verdicts")
    time.sleep(1.5)  # a measured stretch of downtime: nothing may fail while the server is away
    assert finished_while_down == cluster.queue.redis.xlen("guardq:verdicts")
    cluster.sim = SimulatedSGLang(port=port, latency_s=0.05, jitter_s=0.1).start()
    downtime = round(time.monotonic() - down_at, 1)
    ended = cluster.wait_all(batch, after, timeout_s=120)
    result = tally(
        cluster.queue.redis,
        ids,
        scenario="sglang_faults",
        variant=f"connection refused, {jobs} jobs" + (", production defaults" if defaults else ""),
        notes=f"2 workers; server stopped for {downtime} s once 1/4 of the jobs ended, restarted on the same port",
    )
    result.seconds = round(time.monotonic() - started, 1)
    watch_s = cluster.settings.server_watch_interval_s
    result.extra = {"downtime_s": downtime, "settings": cluster.describe() | {"server_watch_interval_s": watch_s}}
    record(result)
    assert jobs == ended
    assert result.accounted, result
    assert (jobs, 0) == (result.completed, result.failed), result.codes


def first_events(cluster: Cluster, ids: list[str], after: str, *, count: int) -> list[CloudEvent]:
    """Wait for the first ``count`` terminal events of ``ids``."""
    seen: list[CloudEvent] = []
    for event in wait_for(cluster.queue.redis, ids, after=after, timeout_s=60):
        seen.append(event)
        if len(seen) >= count:
            break
    return seen


def all_paused(cluster: Cluster) -> bool:
    """Every worker's registry entry (refreshed by its heartbeat) says it stopped consuming."""
    client = cluster.queue.redis
    states = [client.hget(fleet_node_key(m.decode()), "consuming") for m in client.zrange(FLEET_NODES, 0, -1)]
    return len(states) == len(cluster.workers) and all(s == b"0" for s in states)
