"""Per-model queues and priorities with real workers: interactive ahead of bulk, each model on its own workers.

Workers list the interactive queue first and the broker option ``queue_order_strategy=priority`` makes kombu's
Redis transport BRPOP the queues in that order every time (instead of rotating them), so a waiting interactive
job is always taken before a waiting bulk one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from producers.broker import JobQueue
from schemas.job import Priority
from schemas.keys import VERDICT_STREAM, fleet_node_key, job_key
from tests.conftest import Runner
from tests.services.fleet import collect, purge, ran_on, s3_jobs
from tests.services.procs import Service, start_worker, wait_until
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import last_id

pytestmark = pytest.mark.integration
PRIORITY_MODEL = "AIML-TUDA/LlavaGuard-v1.2-0.5B-OV"
BIG_MODEL = "AIML-TUDA/LlavaGuard-34B"
DEFAULT_MODEL = "AIML-TUDA/LlavaGuard-7B"


@pytest.fixture
def own_server() -> Iterator[SimulatedSGLang]:
    server = SimulatedSGLang().start()
    yield server
    server.stop()


def model_worker(env: dict[str, str], workdir: Path, model: str, url: str, name: str, concurrency: int = 1) -> Service:
    return start_worker(
        {
            **env,
            "GUARDQ_MODEL": model,
            "GUARDQ_SGLANG_URL": url,
            "GUARDQ_WORKER_CONCURRENCY": str(concurrency),
            "GUARDQ_SERVER_WATCH_INTERVAL_S": "0.1",
            "GUARDQ_HEARTBEAT_INTERVAL_S": "0.3",
            "GUARDQ_METRICS_PORT": "0",
        },
        workdir,
        name=name,
    )


def stream_order(client: redis_lib.Redis, after: str, job_ids: set[str]) -> list[str]:
    """Job ids of ``job_ids`` in the order their events were published after ``after``."""
    entries = client.xrange(VERDICT_STREAM, min=f"({after}" if after != "0-0" else "-")
    order = [json.loads(fields[b"event"])["data"]["job_id"] for _, fields in entries]
    return [j for j in order if j in job_ids]


def test_a_resumed_worker_takes_every_waiting_interactive_job_before_any_bulk_one(
    worker_env: dict[str, str],
    session_dir: Path,
    job_queue: JobQueue,
    s3_client: Any,
    redis_client: redis_lib.Redis,
    own_server: SimulatedSGLang,
) -> None:
    """One job at a time, so the server's request order is the consumption order: all interactive, then bulk.
    It also shows the pause/resume keeps interactive first. (FIFO within a queue is not asserted: a BRPOP already
    waiting when the pause landed may pop the first bulk job; kombu then requeues it, at the far end.)"""
    purge(redis_client, PRIORITY_MODEL)
    worker = model_worker(worker_env, session_dir / "prio", PRIORITY_MODEL, own_server.url, "prio")
    node = f"prio-{os.getpid()}@localhost"
    try:
        own_server.configure(ready=False)
        wait_until(lambda: redis_client.hget(fleet_node_key(node), "consuming") == b"0", 10, "worker paused")
        bulk = s3_jobs(s3_client, 8, PRIORITY_MODEL, priority=Priority.BULK)
        interactive = s3_jobs(s3_client, 4, PRIORITY_MODEL)
        start = last_id(redis_client)
        for j in [*bulk, *interactive]:
            job_queue.send(j)
        own_server.configure(ready=True)
        events = collect(job_queue, [j.job_id for j in [*bulk, *interactive]], after=start, timeout_s=30)
    finally:
        worker.stop()
    assert all(e.completed for e in events.values())
    served = [str(r["rid"]).split(".")[0] for r in own_server.chat_requests()]
    assert 12 == len(served)
    assert ({j.job_id for j in interactive}, {j.job_id for j in bulk}) == (set(served[:4]), set(served[4:]))


def test_a_backfill_never_starves_live_moderation(
    worker_env: dict[str, str],
    session_dir: Path,
    job_queue: JobQueue,
    s3_client: Any,
    redis_client: redis_lib.Redis,
    own_server: SimulatedSGLang,
) -> None:
    """Interactive jobs sent while a bulk backlog drains finish long before the backlog does."""
    purge(redis_client, PRIORITY_MODEL)
    own_server.configure(latency_s=0.03)
    worker = model_worker(worker_env, session_dir / "prio", PRIORITY_MODEL, own_server.url, "live", concurrency=2)
    try:
        bulk = s3_jobs(s3_client, 40, PRIORITY_MODEL, priority=Priority.BULK, backfill_id="bf-1")
        live = s3_jobs(s3_client, 4, PRIORITY_MODEL)
        start = last_id(redis_client)
        for j in bulk:
            job_queue.send(j)
        bulk_ids = {j.job_id for j in bulk}
        wait_until(lambda: len(stream_order(redis_client, start, bulk_ids)) >= 2, 20, "backlog being worked on")
        for j in live:
            job_queue.send(j)
        events = collect(job_queue, [j.job_id for j in [*bulk, *live]], after=start, timeout_s=30)
    finally:
        worker.stop()
    assert all(e.completed for e in events.values())
    order = stream_order(redis_client, start, bulk_ids | {j.job_id for j in live})
    last_live = max(order.index(j.job_id) for j in live)
    bulk_after_live = len(order) - 1 - last_live
    assert bulk_after_live >= 20, f"only {bulk_after_live} of 40 bulk jobs were left when the live ones ended"
    assert {"guardq.llavaguard-v1.2-0.5b-ov.bulk"} == {
        redis_client.hget(job_key(j.job_id), "queue").decode() for j in bulk
    }


def test_a_mixed_fleet_routes_each_job_to_its_models_queue_and_only_that_models_workers(
    runner: Runner,
    sim: SimulatedSGLang,
    worker_env: dict[str, str],
    session_dir: Path,
    job_queue: JobQueue,
    s3_client: Any,
    redis_client: redis_lib.Redis,
    own_server: SimulatedSGLang,
) -> None:
    """The session worker serves 7B (the default model) on its server; a 34B worker serves 34B on its own."""
    purge(redis_client, BIG_MODEL)
    big = model_worker(worker_env, session_dir / "mixed", BIG_MODEL, own_server.url, "w34", concurrency=2)
    try:
        small_jobs = s3_jobs(s3_client, 5, DEFAULT_MODEL)
        big_jobs = s3_jobs(s3_client, 5, BIG_MODEL)
        default_jobs = s3_jobs(s3_client, 3, None)  # names no model: the producer's default
        start = last_id(redis_client)
        for j in [*small_jobs, *big_jobs, *default_jobs]:
            job_queue.send(j)
        events = collect(
            job_queue, [j.job_id for j in [*small_jobs, *big_jobs, *default_jobs]], after=start, timeout_s=30
        )
    finally:
        big.stop()
    seven = {j.job_id for j in [*small_jobs, *default_jobs]}
    thirty_four = {j.job_id for j in big_jobs}
    assert {DEFAULT_MODEL} == {events[j].data.model.name for j in seven if events[j].data.model}
    assert {BIG_MODEL} == {events[j].data.model.name for j in thirty_four if events[j].data.model}
    assert all(events[j].completed for j in seven | thirty_four)
    on_small_server = {str(r["rid"]).split(".")[0] for r in sim.chat_requests()} & (seven | thirty_four)
    on_big_server = {str(r["rid"]).split(".")[0] for r in own_server.chat_requests()} & (seven | thirty_four)
    assert (seven, thirty_four) == (on_small_server, on_big_server)
    assert {"guardq.llavaguard-34b"} == {redis_client.hget(job_key(j), "queue").decode() for j in thirty_four}
    assert {"guardq.llavaguard-7b"} == {redis_client.hget(job_key(j), "queue").decode() for j in seven}
    assert {f"w34-{os.getpid()}@localhost"} == {ran_on(redis_client, j)[0] for j in thirty_four}
