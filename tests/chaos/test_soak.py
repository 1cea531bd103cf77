"""Soak: thousands of jobs through real Redis, two real workers and an SGLang test server with random latency.

The mix is not all sunshine: one job in 50 is a text file named .jpg (fails ``not_an_image``) and the server
answers 503 to one request every quarter second (those jobs retry), so both terminal types and retries are counted.

Every job is accounted for from the stream and the job hashes: completed + failed == enqueued, no event id twice,
no job left queued or running, no message left in a queue or reserved; the workers' resident memory is recorded
before and after (a leak of even a few KiB per job shows over 10,000 jobs).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from producers.uploads import UploadStore
from schemas.events import CloudEvent
from schemas.job import ModerationJob
from schemas.keys import VERDICT_STREAM
from tests.chaos.cluster import Cluster
from tests.chaos.ledger import record, tally
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration
LATENCY_S, JITTER_S, THREADS = 0.01, 0.25, 16
BAD_EVERY, FAULT_EVERY_S = 50, 0.25


def sprinkle_503s(sim: SimulatedSGLang, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(FAULT_EVERY_S):
            sim.add_faults({"status": 503, "message": "The request queue is full"})

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def event_ids(cluster: Cluster, job_ids: set[str]) -> list[str]:
    ids = []
    for _, fields in cluster.queue.redis.xrange(VERDICT_STREAM):
        event = CloudEvent.model_validate_json(fields[b"event"])
        if event.data.job_id in job_ids:
            ids.append(event.id)
    return ids


@pytest.mark.parametrize(
    ("jobs", "timeout_s"),
    [pytest.param(300, 90, id="fast"), pytest.param(10_000, 900, id="full", marks=pytest.mark.chaos)],
)
@pytest.mark.timeout(1200)
def test_every_job_of_a_long_run_ends_in_exactly_one_event_and_memory_stays_flat(
    cluster_factory: type[Cluster], tmp_path: Path, jobs: int, timeout_s: float
) -> None:
    cluster = cluster_factory(tmp_path, visibility_timeout_s=60, env_extra={"GUARDQ_WORKER_CONCURRENCY": str(THREADS)})
    cluster.start(workers=2, latency_s=LATENCY_S, jitter_s=JITTER_S)
    warmup = cluster.jobs(40, seed=99)  # first-use costs (imports, pools, caches) land before the baseline
    assert len(warmup) == cluster.wait_all(warmup, cluster.send(warmup), timeout_s=60)
    rss_before = cluster.worker_rss_mb()

    store = UploadStore(cluster.settings)
    batch = [
        ModerationJob(image=store.put(f"not an image #{i}".encode(), extension="jpg")) if i % BAD_EVERY == 0 else job
        for i, job in enumerate(cluster.jobs(jobs, seed=jobs))
    ]
    assert cluster.sim is not None
    stop = threading.Event()
    started = time.monotonic()
    faults = sprinkle_503s(cluster.sim, stop)
    after = cluster.send(batch)
    ended, rss_half = 0, {}
    for ended, _ in enumerate(
        wait_for(cluster.queue.redis, [j.job_id for j in batch], after=after, timeout_s=timeout_s), 1
    ):
        if ended == jobs // 2:
            rss_half = cluster.worker_rss_mb()  # growth that continues past here would be a per-job leak
    seconds = round(time.monotonic() - started, 1)
    stop.set()
    faults.join(2)
    rss_after = cluster.worker_rss_mb()

    ids = [j.job_id for j in batch]
    result = tally(
        cluster.queue.redis,
        ids,
        scenario="soak",
        variant=f"{jobs} jobs",
        notes=(
            f"2 workers x {THREADS} threads; SGLang latency {LATENCY_S}s + uniform jitter [0, {JITTER_S})s; "
            f"1 job in {BAD_EVERY} not an image; a 503 every {FAULT_EVERY_S}s"
        ),
    )
    seen_ids = event_ids(cluster, set(ids))
    repeated = sum(n - 1 for n in Counter(seen_ids).values())
    leftovers = {
        "queued": sum(cluster.queue.depth(q) for q in ("guardq.llavaguard-7b", "guardq.llavaguard-7b.bulk")),
        "reserved": int(cluster.queue.redis.hlen("unacked")),
    }
    result.seconds = seconds
    result.extra = {
        "jobs_per_s": round(jobs / seconds, 1),
        "rss_mb_before": rss_before,
        "rss_mb_half_way": rss_half,
        "rss_mb_after": rss_after,
        "duplicate_event_ids": repeated,
        "settings": cluster.describe(),
        **leftovers,
    }
    record(result)
    assert jobs == ended
    assert result.accounted, result
    assert {"not_an_image": len(range(0, jobs, BAD_EVERY))} == result.codes
    assert result.retries >= 1, "the 503s should have cost some retries"
    assert 0 == repeated
    assert {"queued": 0, "reserved": 0} == leftovers
    for name, before in rss_before.items():
        # Bounded, not equal: allocator arenas and pools settle; a per-job leak would grow with the job count.
        assert rss_after[name] < before + 64 + jobs * 0.004, (name, before, rss_after[name])
        assert rss_after[name] - rss_half[name] < 16 + jobs * 0.001, (name, rss_half[name], rss_after[name])
