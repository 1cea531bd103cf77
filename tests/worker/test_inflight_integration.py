"""A worker with production defaults (no concurrency set) against a batching test server: full, not flooded.

The server runs 16 requests at once for 0.25 s each and queues the rest (reported in ``/v1/loads`` like SGLang).
The worker must fill it (every slot busy while jobs wait), keep its queue small, and leave the backlog in Redis
where other workers could take it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.broker import JobQueue
from schemas.keys import model_queues
from schemas.models import get_model
from tests.benchmarks.workload import distinct_jpegs, upload_jobs
from tests.services.procs import Service, start_worker
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import last_id, wait_for
from worker.inflight import Band

pytestmark = pytest.mark.integration

CAPACITY = 16
MODEL = "AIML-TUDA/LlavaGuard-v1.1-13B-hf"  # a model of its own: the shared worker does not consume its queues


@pytest.fixture
def batching_server() -> Iterator[SimulatedSGLang]:
    sim = SimulatedSGLang(max_running=CAPACITY, latency_s=0.25).start()
    yield sim
    sim.stop()


@pytest.fixture
def default_worker(
    worker_env: dict[str, str], batching_server: SimulatedSGLang, tmp_path: Path
) -> Iterator[Service]:
    env = {k: v for k, v in worker_env.items() if k != "GUARDQ_WORKER_CONCURRENCY"}
    env |= {"GUARDQ_SGLANG_URL": batching_server.url, "GUARDQ_MODEL": MODEL, "GUARDQ_SGLANG_TIMEOUT_S": "120"}
    service = start_worker(env, tmp_path, name="inflight")
    yield service
    service.stop()


def test_a_default_worker_fills_the_server_and_leaves_the_backlog_in_redis(
    default_worker: Service, batching_server: SimulatedSGLang, worker_env: dict[str, str], settings: object
) -> None:
    from schemas.settings import Settings

    assert isinstance(settings, Settings)
    queue = JobQueue(settings)
    jobs = upload_jobs(settings, distinct_jpegs(320, seed=4242), model=MODEL)
    depth: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        interactive = model_queues(get_model(MODEL))[0]
        while not stop.wait(0.05):
            depth.append(queue.depth(interactive))

    watcher = threading.Thread(target=watch, daemon=True)
    after = last_id(queue.redis)
    started = time.monotonic()
    queue.send_many(jobs)
    watcher.start()
    events = list(wait_for(queue.redis, [j.job_id for j in jobs], after=after, timeout_s=120))
    wall = time.monotonic() - started
    stop.set()
    queue.close()
    assert len(jobs) == len(events) == sum(1 for e in events if e.completed)
    assert CAPACITY == batching_server.peak_running  # every slot was used
    # never flooded: the server's queue stayed within the controller's band (plus one growth step of slack)
    assert batching_server.peak_waiting <= Band().high(CAPACITY) + CAPACITY // 2
    # the backlog waited in Redis, not in the worker: most of the jobs were still queued a second in
    assert max(depth[:20]) > len(jobs) // 2
    peaks = batching_server.peak_running, batching_server.peak_waiting
    print(f"\n{len(jobs)} jobs in {wall:.1f}s; peak running {peaks[0]}, waiting {peaks[1]}")
    # 5 s for a server kept full from the first second. The throughput figure is a benchmark's (make bench, P1:
    # default worker against a direct client on the same box); here only a wide bound, because a suite on two
    # shared cores starves the worker's own CPU stages (7.6-10.5 s measured with one busy core): a worker stuck at
    # 5 or fewer in flight takes 16 s or more.
    ideal = len(jobs) * 0.25 / CAPACITY
    assert wall < ideal * 3.0, f"{wall:.1f}s for {len(jobs)} jobs (ideal {ideal:.1f}s)"


def test_a_default_worker_keeps_the_servers_image_preprocessing_short_and_gets_no_timeouts(
    worker_env: dict[str, str], settings: object, tmp_path: Path
) -> None:
    """SGLang preprocesses each image on a CPU pool before its scheduler sees it and answers 500 when that took
    longer than REQUEST_TIMEOUT (10 s by default) — on the H200 with OneVision at native detail, 481 of 1,740
    requests. ``/v1/loads`` shows none of the requests waiting there. Here the pool does 40 images/s (2 processes,
    50 ms each) in front of a GPU that would do far more, with the server's default timeout; 600 jobs sent at once
    would wait 15 s there if the worker kept growing on the empty scheduler queue."""
    from schemas.settings import Settings

    assert isinstance(settings, Settings)
    sim = SimulatedSGLang(max_running=64, latency_s=0.05, preprocess_s=0.05, preprocess_workers=2).start()
    env = {k: v for k, v in worker_env.items() if k != "GUARDQ_WORKER_CONCURRENCY"}
    env |= {"GUARDQ_SGLANG_URL": sim.url, "GUARDQ_MODEL": MODEL}
    service = start_worker(env, tmp_path, name="inflight-preprocess")
    try:
        queue = JobQueue(settings)
        jobs = upload_jobs(settings, distinct_jpegs(600, seed=5151), model=MODEL)
        after = last_id(queue.redis)
        started = time.monotonic()
        queue.send_many(jobs)
        events = list(wait_for(queue.redis, [j.job_id for j in jobs], after=after, timeout_s=180))
        wall = time.monotonic() - started
        queue.close()
    finally:
        service.stop()
        sim.stop()
    print(f"\n{len(jobs)} jobs in {wall:.1f}s; peak in preprocessing {sim.preprocess.peak_inside}")
    assert len(jobs) == len(events) == sum(1 for e in events if e.completed)
    assert sim.preprocess.timed_out == 0  # no request waited 10 s: no 500, no job retry
    # the starting allowance (32) at most: the controller counted what waited there as the server's queue
    assert sim.preprocess.peak_inside <= 40
    assert not any(r.get("status") == 500 for r in sim.requests)
