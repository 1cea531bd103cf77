"""Workers killed with SIGKILL under load lose no job and duplicate no event.

Their in-flight and prefetched jobs sit unacknowledged in Redis and are redelivered after the visibility timeout
(set once, in the broker transport options shared by producers and workers); the per-job publish guard turns any
second run into no second event.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from producers.events import wait_for
from tests.chaos.cluster import Cluster
from tests.chaos.ledger import record, tally

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("jobs", "kills"),
    [pytest.param(60, 1, id="fast"), pytest.param(1500, 5, id="full", marks=pytest.mark.chaos)],
)
@pytest.mark.timeout(600)
def test_sigkilled_workers_lose_no_job_and_duplicate_no_event(
    cluster_factory: type[Cluster], tmp_path: Path, jobs: int, kills: int
) -> None:
    cluster = cluster_factory(tmp_path, visibility_timeout_s=8).start(workers=2, latency_s=0.1, jitter_s=0.3)
    batch = cluster.jobs(jobs, seed=jobs)
    ids = [j.job_id for j in batch]
    rng = random.Random(jobs)
    kill_at = sorted(rng.sample(range(jobs // 10, jobs // 2), kills))
    started = time.monotonic()
    after = cluster.send(batch)
    done_kills = 0
    for seen, _ in enumerate(wait_for(cluster.queue.redis, ids, after=after, timeout_s=60 + 30 * kills), 1):
        if done_kills < kills and seen >= kill_at[done_kills]:
            victim = f"w{done_kills % 2}"
            cluster.kill_worker(victim)
            cluster.start_worker(victim)
            done_kills += 1
    result = tally(
        cluster.queue.redis,
        ids,
        scenario="worker_kill",
        variant=f"{jobs} jobs, {kills} x kill -9",
        notes="2 workers x 8 threads, visibility timeout 8 s",
    )
    result.kills = done_kills
    result.seconds = round(time.monotonic() - started, 1)
    result.extra = {"settings": cluster.describe()}
    record(result)
    assert kills == done_kills
    assert (jobs, 0, 0) == (result.survived, result.lost, result.duplicated)
    assert result.redeliveries >= 1, "a kill under load should have left at least one job to redeliver"
