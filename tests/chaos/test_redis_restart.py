"""Redis killed (SIGKILL) and restarted from its append-only file mid-run: workers and producers reconnect.

Loss is measured, not assumed: with ``appendfsync always`` every acknowledged write is on disk before Redis replies;
with ``everysec`` up to a second of writes (queued jobs, events, acknowledgements) can vanish in a crash.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.cluster import Cluster
from tests.chaos.ledger import record, tally
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("fsync", "jobs", "defaults"),
    [
        pytest.param("always", 80, False, id="always-fast"),
        pytest.param("always", 800, False, id="always-full", marks=pytest.mark.chaos),
        pytest.param("everysec", 800, False, id="everysec-full", marks=pytest.mark.chaos),
        pytest.param("always", 400, True, id="always-production-defaults", marks=pytest.mark.chaos),
    ],
)
@pytest.mark.timeout(600)
def test_a_redis_crash_and_restart_loses_nothing_acknowledged(
    cluster_factory: type[Cluster], tmp_path: Path, fsync: str, jobs: int, defaults: bool
) -> None:
    cluster = cluster_factory(
        tmp_path, visibility_timeout_s=10, appendonly=True, fsync=fsync, production_defaults=defaults
    )
    cluster.start(workers=2, latency_s=0.05, jitter_s=0.2)
    first, second = cluster.jobs(jobs // 2, seed=1), cluster.jobs(jobs - jobs // 2, seed=2)
    started = time.monotonic()
    after = cluster.send(first)
    # Crash Redis once a quarter of the first half has finished, while the rest is queued or in flight.
    for seen, _ in enumerate(wait_for(cluster.queue.redis, [j.job_id for j in first], after=after, timeout_s=60), 1):
        if seen >= len(first) // 4:
            break
    cluster.kill_redis()
    cluster.start_redis()
    restarted = time.monotonic()
    cluster.send(second)  # the producer reconnects by itself
    ids = [j.job_id for j in first + second]
    list(wait_for(cluster.queue.redis, ids, after="0-0", timeout_s=90))  # a job lost with everysec never ends
    ended_after_restart_s = round(time.monotonic() - restarted, 1)
    result = tally(
        cluster.queue.redis,
        ids,
        scenario="redis_restart",
        variant=f"appendfsync {fsync}, {jobs} jobs" + (", production defaults" if defaults else ""),
        notes="SIGKILL + restart from AOF after 1/8 of the jobs finished",
    )
    result.seconds = round(time.monotonic() - started, 1)
    result.kills = 1  # one SIGKILL of redis-server, restarted from its append-only file
    result.extra = {"settings": cluster.describe(), "ended_after_restart_s": ended_after_restart_s}
    record(result)
    assert 0 == result.duplicated
    if fsync == "always":
        assert 0 == result.lost
    if defaults:  # nothing waits out the hour-long visibility timeout (the workers' own audits give orphans back)
        assert 0 == result.stuck and ended_after_restart_s <= 60


@pytest.mark.timeout(120)
def test_a_job_the_broker_lost_in_a_crash_is_resent_after_redis_restarts(
    cluster_factory: type[Cluster], tmp_path: Path
) -> None:
    """The crash window kombu leaves open: a message popped (BRPOP persisted) but never recorded as unacknowledged.

    Given a job whose message vanished from Redis while its job record stayed, when Redis restarts and a worker
    starts, then the worker's reconciler sends the job again under its id and it ends in exactly one event.
    """
    cluster = cluster_factory(tmp_path, visibility_timeout_s=10, appendonly=True, fsync="always")
    cluster.start(workers=0, latency_s=0.01)
    [lost] = cluster.jobs(1, seed=7)
    after = cluster.send([lost])
    assert cluster.queue.redis.rpop("guardq.llavaguard-7b") is not None  # the message is gone, the record is not
    cluster.kill_redis()
    cluster.start_redis()
    cluster.start_worker("w0")
    [event] = list(wait_for(cluster.queue.redis, [lost.job_id], after=after, timeout_s=60))
    assert event.completed
    result = tally(
        cluster.queue.redis,
        [lost.job_id],
        scenario="redis_restart",
        variant="message lost in the BRPOP window, record kept",
        notes="reconciler re-sent it",
    )
    result.kills = 1
    record(result)
    assert (1, 0, 0) == (result.survived, result.lost, result.duplicated)
    assert b"1" == cluster.queue.redis.hget(f"guardq:job:{lost.job_id}", "reconciled")
