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
from kombu import Connection

from tests.chaos.cluster import Cluster
from tests.chaos.ledger import record, tally
from worker.delivery.stream.reader import wait_for

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
    settings = cluster.describe()
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
    result.extra = {"settings": settings}
    record(result)
    assert kills == done_kills
    assert (jobs, 0, 0) == (result.survived, result.lost, result.duplicated)
    assert result.redeliveries >= 1, "a kill under load should have left at least one job to redeliver"


@pytest.mark.timeout(120)
def test_a_worker_killed_inside_the_restore_sweep_delays_redelivery_only_until_its_lock_expires(
    cluster_factory: type[Cluster], tmp_path: Path
) -> None:
    """kombu restores dead workers' messages under a Redis lock; kill -9 at that moment leaves the lock behind.

    With kombu's default expiry (300 s) every redelivery then waits five minutes; guardq's transport options expire
    it after a tenth of the visibility timeout (5 to 60 s). The lock is planted exactly as a killed holder leaves it.
    """
    cluster = cluster_factory(tmp_path, visibility_timeout_s=8).start(workers=2, latency_s=0.3, jitter_s=0.2)
    options = cluster.settings.broker_transport_options()
    expire = options["unacked_mutex_expire"]
    assert isinstance(expire, int)
    settings = cluster.describe()
    with Connection(cluster.settings.redis_url, transport_options=options) as broker:
        assert expire == broker.default_channel.unacked_mutex_expire  # kombu takes the option as given
    batch = cluster.jobs(40, seed=41)
    ids = [j.job_id for j in batch]
    started = time.monotonic()
    after = cluster.send(batch)
    for seen, _ in enumerate(wait_for(cluster.queue.redis, ids, after=after, timeout_s=30), 1):
        if seen == 5:
            break
    assert cluster.queue.redis.set("unacked_mutex", "token-of-the-killed-holder", px=expire * 1000, nx=True)
    cluster.kill_worker("w0")
    killed = time.monotonic()
    list(wait_for(cluster.queue.redis, ids, after=after, timeout_s=cluster.visibility_timeout_s + expire + 30))
    recovered_s = round(time.monotonic() - killed, 1)
    result = tally(
        cluster.queue.redis,
        ids,
        scenario="worker_kill",
        variant="40 jobs, kill -9 while holding the restore lock",
        notes=f"restore lock expires after {expire} s (kombu default 300 s); all jobs ended {recovered_s} s after the kill",
    )
    result.kills, result.seconds = 1, round(time.monotonic() - started, 1)
    result.extra = {"settings": settings, "restore_lock_expire_s": expire, "ended_after_kill_s": recovered_s}
    record(result)
    assert (40, 0, 0, 0) == (result.survived, result.lost, result.duplicated, result.stuck)
    assert result.redeliveries >= 1
    assert recovered_s < cluster.visibility_timeout_s + expire + 15
