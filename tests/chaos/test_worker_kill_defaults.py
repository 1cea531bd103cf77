"""With production defaults (nothing shortened), a ``kill -9``ed worker's jobs end within a minute of the kill.

Defaults: visibility timeout 3,600 s, SGLang timeout 120 s (so a verdict-cache lock lives 250 s), the cache on,
32 threads per worker. Before the reclaimer, the jobs a killed worker held waited out the visibility timeout (an
hour) as ``running``; and a redelivered job waited 60 s for the cache lock its own dead attempt held. Now the
messages of a dead incarnation go back once its lease is gone (or at once when its node restarts under the same
name), and a redelivered job takes over its own lock.

Besides lost/duplicated, each row checks the cost: model requests beyond one per job are at most the jobs the
victim held at the kill (its requests in flight die with it and run once more elsewhere; nothing else repeats).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schemas.keys import UNACKED_OWNERS
from tests.chaos.cluster import Cluster
from tests.chaos.ledger import record, tally
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration
ENDED_WITHIN_S = 60.0


def held_by(cluster: Cluster, name: str) -> int:
    """Messages the worker ``name`` holds reserved right now (its incarnations' entries in the owners hash)."""
    node = cluster.workers[name].url
    owners = cluster.queue.redis.hvals(UNACKED_OWNERS)
    return sum(1 for owner in owners if owner.decode().rsplit("#", 1)[0] == node)


@pytest.mark.parametrize(
    ("jobs", "kills", "restart"),
    [
        pytest.param(120, 1, False, id="fast"),
        pytest.param(200, 1, False, id="full-no-restart", marks=pytest.mark.chaos),
        pytest.param(400, 3, True, id="full-restarted", marks=pytest.mark.chaos),
    ],
)
@pytest.mark.timeout(600)
def test_with_production_defaults_every_job_of_a_killed_worker_ends_within_a_minute(
    cluster_factory: type[Cluster], tmp_path: Path, jobs: int, kills: int, restart: bool
) -> None:
    cluster = cluster_factory(tmp_path, production_defaults=True).start(workers=2, latency_s=0.6, jitter_s=0.8)
    settings = cluster.describe()
    assert settings["visibility_timeout_s"] == 3600 and settings["sglang_timeout_s"] == 120.0
    batch = cluster.jobs(jobs, seed=jobs + kills)
    ids = [j.job_id for j in batch]
    kill_at = [jobs * (k + 1) // (2 * kills + 2) for k in range(kills)]  # spread over the first half of the run
    started = time.monotonic()
    after = cluster.send(batch)
    held_at_kills: list[int] = []
    last_kill = started
    last_event = started
    for seen, _ in enumerate(wait_for(cluster.queue.redis, ids, after=after, timeout_s=120 + 60 * kills), 1):
        last_event = time.monotonic()
        if len(held_at_kills) < kills and seen >= kill_at[len(held_at_kills)]:
            victim = f"w{len(held_at_kills) % 2}"
            held_at_kills.append(held_by(cluster, victim))
            cluster.kill_worker(victim)
            last_kill = time.monotonic()
            if restart:
                cluster.start_worker(victim)
    ended_after_kill_s = round(last_event - last_kill, 1)
    requests = len(cluster.sim.chat_requests()) if cluster.sim is not None else 0
    how = "restarted under the same name" if restart else "not restarted"
    result = tally(
        cluster.queue.redis,
        ids,
        scenario="worker_kill_defaults",
        variant=f"{jobs} jobs, {kills} x kill -9 ({how})",
        notes=f"production defaults; 2 workers x 32 threads; SGLang latency 0.6 s + up to 0.8 s; victim {how}",
    )
    result.kills = len(held_at_kills)
    result.seconds = round(time.monotonic() - started, 1)
    result.extra = {
        "settings": settings,
        "ended_after_last_kill_s": ended_after_kill_s,
        "held_by_victims_at_kills": held_at_kills,
        "model_requests": requests,
        "extra_model_requests": requests - jobs,
    }
    record(result)
    assert kills == len(held_at_kills)
    assert (jobs, 0, 0, 0) == (result.survived, result.lost, result.duplicated, result.stuck)
    assert ended_after_kill_s <= ENDED_WITHIN_S, f"the last job ended {ended_after_kill_s} s after the last kill"
    assert 0 <= requests - jobs <= sum(held_at_kills), "model requests beyond those the victims held in flight"
