"""``guardq worker --gpus`` for real: one SGLang test server per fake GPU, supervised workers, Redis, S3.

Fake GPUs are just ``CUDA_VISIBLE_DEVICES`` values (7 and 9); each server prints the value it got, and its request
log (``GET /_control/requests``) shows which jobs reached it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from producers.broker import JobQueue
from schemas.keys import fleet_node_key, model_queues
from schemas.models import get_model
from tests.services.fleet import (
    Fleet,
    collect,
    events_per_job,
    purge,
    ran_on,
    s3_jobs,
    send_and_collect,
    start_fleet,
)
from tests.services.procs import start_worker, wait_until
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import last_id

pytestmark = pytest.mark.integration
MODEL = "AIML-TUDA/LlavaGuard-13B"
DRAIN_MODEL = "AIML-TUDA/LlavaGuard-v1.1-7B-hf"
ATTACH_MODEL = "AIML-TUDA/LlavaGuard-v1.1-13B-hf"


@pytest.fixture(scope="module")
def fleet(worker_env: dict[str, str], session_dir: Path, redis_client: redis_lib.Redis) -> Iterator[Fleet]:
    purge(redis_client, MODEL)
    launched = start_fleet(
        worker_env,
        session_dir / "fleet",
        gpus="7,9",
        model=MODEL,
        concurrency=4,
        server_args="--latency 0.05",
        extra_env={"GUARDQ_SGLANG_RESTART_BACKOFF_S": "4", "GUARDQ_SGLANG_LIVENESS_FAILURES": "2"},
    )
    yield launched
    assert 0 == launched.terminate()


def served_jobs(fleet: Fleet, index: int, job_ids: set[str]) -> set[str]:
    """Which of ``job_ids`` reached the server of slot ``index`` (rid = ``<job id>.<attempt>``)."""
    return {str(r["rid"]).split(".")[0] for r in fleet.requests(index)} & job_ids


def test_each_fake_gpu_gets_its_own_server_and_each_worker_talks_only_to_its_own(
    fleet: Fleet, job_queue: JobQueue, s3_client: Any, redis_client: redis_lib.Redis
) -> None:
    assert "READY http://127.0.0.1" in fleet.log("server-0") and "gpu=7" in fleet.log("server-0")
    assert "gpu=9" in fleet.log("server-1")
    assert ["7", "9"] == [fleet.node(n)["gpu"] for n in fleet.nodes]
    jobs = s3_jobs(s3_client, 24, MODEL)
    events = send_and_collect(job_queue, jobs)
    assert all(e.completed for e in events.values())
    ids = {j.job_id for j in jobs}
    per_server = [served_jobs(fleet, i, ids) for i in (0, 1)]
    per_worker = [{j for j in ids if ran_on(redis_client, j)[0] == node} for node in fleet.nodes]
    print(f"\nrequests per server: gpu7={len(per_server[0])} gpu9={len(per_server[1])} (24 jobs)")
    assert per_worker == per_server
    assert per_server[0] and per_server[1]
    assert ids == per_server[0] | per_server[1]
    assert not per_server[0] & per_server[1]
    for index, gpu in enumerate(("7", "9")):  # JSON log lines carry job id, tenant, model and GPU
        lines = [json.loads(line) for line in fleet.log(f"worker-{index}").splitlines() if line.startswith("{")]
        finished = [line for line in lines if line.get("event") == "job_finished" and line.get("job_id") in ids]
        assert finished
        assert {("default", "llavaguard-13b", gpu)} == {(x["tenant"], x["model"], x["gpu"]) for x in finished}


def test_the_worker_metrics_endpoint_reports_jobs_stages_in_flight_and_queue_depths(
    fleet: Fleet, job_queue: JobQueue, s3_client: Any
) -> None:
    send_and_collect(job_queue, s3_jobs(s3_client, 6, MODEL))
    node = fleet.node(fleet.nodes[0])
    text = httpx.get(node["metrics_url"], timeout=5).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    slug = get_model(MODEL).slug
    assert value("guardq_jobs_total", model=slug, outcome="completed", code="none") >= 1
    for stage in ("fetch", "prepare", "infer", "publish", "total"):
        assert value("guardq_stage_duration_seconds_count", model=slug, stage=stage) >= 1
    assert 0 == value("guardq_jobs_in_flight", model=slug, gpu="7")
    assert 1 == value("guardq_sglang_up", gpu="7")
    assert 1 == value("guardq_consuming", gpu="7")
    for queue in model_queues(get_model(MODEL)):
        assert 0 <= value("guardq_queue_depth", queue=queue)
    info = value("guardq_worker_info", node=fleet.nodes[0], model=slug, gpu="7", sglang_url=fleet.server_url(0))
    assert 1 == info


def test_fleet_status_shows_each_gpu_server_its_worker_and_the_queues(fleet: Fleet, worker_env: dict[str, str]) -> None:
    env = {**os.environ, "GUARDQ_REDIS_URL": worker_env["GUARDQ_REDIS_URL"], "COLUMNS": "200"}
    guardq = str(Path(sys.executable).parent / "guardq")
    out = subprocess.run(
        [guardq, "fleet", "status", "--json"], check=False, capture_output=True, text=True, env=env, timeout=30
    )
    assert 0 == out.returncode, out.stderr
    data = json.loads(out.stdout)
    nodes = {n["node"]: n for n in data["nodes"]}
    for name, gpu in zip(fleet.nodes, ("7", "9"), strict=True):
        assert (gpu, "up", "1", "ready") == (
            nodes[name]["gpu"],
            nodes[name]["health"],
            nodes[name]["consuming"],
            nodes[name]["server_state"],
        )
    assert set(model_queues(get_model(MODEL))) <= set(data["queues"])
    table = subprocess.run(
        [guardq, "fleet", "status"], check=False, capture_output=True, text=True, env=env, timeout=30
    )
    assert 0 == table.returncode
    assert all(name in table.stdout for name in fleet.nodes)
    assert "guardq.llavaguard-13b.bulk" in table.stdout


def test_a_killed_server_pauses_its_worker_the_other_keeps_going_and_work_resumes_after_the_restart(
    fleet: Fleet, job_queue: JobQueue, s3_client: Any, redis_client: redis_lib.Redis
) -> None:
    healthy, victim = fleet.nodes
    os.kill(int(fleet.node(victim)["server_pid"]), signal.SIGKILL)
    wait_until(lambda: fleet.node(victim).get("consuming") == "0", 10, "victim's worker paused", fleet.proc)

    during = s3_jobs(s3_client, 12, MODEL)
    events = send_and_collect(job_queue, during)
    assert all(e.completed for e in events.values())
    assert {(healthy, "1")} == {ran_on(redis_client, j.job_id) for j in during}  # none taken by the dead GPU
    assert fleet.node(victim)["server_state"] in {"down", "starting"}  # the outage lasted through the batch

    wait_until(lambda: fleet.serving(victim), 30, "victim's server restarted and its worker consuming", fleet.proc)
    assert "1" == fleet.node(victim)["server_restarts"]
    assert 2 == fleet.log("server-1").count("gpu=9")  # the restarted server got the same GPU
    after = s3_jobs(s3_client, 24, MODEL)
    events = send_and_collect(job_queue, after)
    assert all(e.completed for e in events.values())
    resumed = served_jobs(fleet, 1, {j.job_id for j in after})  # the new server process's own request log
    assert resumed
    assert {victim} == {ran_on(redis_client, j)[0] for j in resumed}


def test_a_server_failing_its_health_checks_is_killed_and_restarted_while_its_worker_waits(
    fleet: Fleet, job_queue: JobQueue, s3_client: Any
) -> None:
    node = fleet.nodes[0]
    before = int(fleet.node(node)["server_restarts"])
    httpx.post(f"{fleet.server_url(0)}/_control/configure", json={"ready": False}, timeout=5)  # alive but unhealthy
    wait_until(lambda: fleet.node(node).get("consuming") == "0", 10, "worker paused", fleet.proc)
    wait_until(
        lambda: int(fleet.node(node)["server_restarts"]) == before + 1 and fleet.serving(node),
        30,
        "unhealthy server replaced and its worker consuming again",
        fleet.proc,
    )
    assert "/health failed 2 times in a row" in fleet.log("launcher")
    events = send_and_collect(job_queue, s3_jobs(s3_client, 8, MODEL))
    assert all(e.completed for e in events.values())


def test_sigterm_during_load_drains_in_flight_jobs_and_loses_none(
    worker_env: dict[str, str],
    session_dir: Path,
    job_queue: JobQueue,
    s3_client: Any,
    redis_client: redis_lib.Redis,
    sim: SimulatedSGLang,
) -> None:
    purge(redis_client, DRAIN_MODEL)
    draining = start_fleet(
        worker_env, session_dir / "drain", gpus="3,4", model=DRAIN_MODEL, concurrency=3, server_args="--latency 0.3"
    )
    server_pids = [int(draining.node(n)["server_pid"]) for n in draining.nodes]
    jobs = s3_jobs(s3_client, 30, DRAIN_MODEL)
    ids = [j.job_id for j in jobs]
    start = last_id(redis_client)
    for j in jobs:
        job_queue.send(j)
    wait_until(lambda: sum(events_per_job(redis_client, set(ids)).values()) >= 4, 20, "first events")

    assert 0 == draining.terminate(timeout_s=30)
    done = {j for j, n in events_per_job(redis_client, set(ids)).items() if n}
    waiting = sum(int(redis_client.llen(q)) for q in model_queues(get_model(DRAIN_MODEL)))
    assert len(ids) == len(done) + waiting  # every job either finished or is back in its queue
    assert waiting > 0  # SIGTERM came mid-load
    for pid in server_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    finisher = start_worker(
        {**worker_env, "GUARDQ_MODEL": DRAIN_MODEL, "GUARDQ_SGLANG_URL": sim.url}, session_dir / "drain", name="rest"
    )
    try:
        events = collect(job_queue, ids, after=start, timeout_s=30)
    finally:
        finisher.stop()
    assert all(e.completed for e in events.values())
    assert {1} == set(events_per_job(redis_client, set(ids)).values())


def test_repeated_sglang_urls_attach_one_supervised_worker_to_each_running_server(
    worker_env: dict[str, str],
    session_dir: Path,
    job_queue: JobQueue,
    s3_client: Any,
    redis_client: redis_lib.Redis,
) -> None:
    purge(redis_client, ATTACH_MODEL)
    servers = [SimulatedSGLang(latency_s=0.05).start() for _ in range(2)]
    log_dir = session_dir / "attach"
    env = {
        **os.environ,
        **worker_env,
        "PYTHONUNBUFFERED": "1",
        "GUARDQ_HEARTBEAT_INTERVAL_S": "0.5",
        "GUARDQ_METRICS_PORT": "0",
    }
    args = [sys.executable, "-m", "worker", "--model", ATTACH_MODEL, "--concurrency", "2", "--node-host", "pod"]
    for server in servers:
        args += ["--sglang-url", server.url]
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "launcher.log").open("wb") as out:
        launcher = subprocess.Popen([*args, "--log-dir", str(log_dir)], stdout=out, stderr=subprocess.STDOUT, env=env)
    nodes = ["sglang0@pod", "sglang1@pod"]
    try:

        def attached(node: str) -> bool:
            fields = redis_client.hmget(fleet_node_key(node), ["server_state", "consuming"])
            return [b"attached", b"1"] == fields

        for node in nodes:
            wait_until(lambda n=node: attached(n), 30, f"{node} attached", launcher)
        jobs = s3_jobs(s3_client, 12, ATTACH_MODEL)
        events = send_and_collect(job_queue, jobs)
        assert all(e.completed for e in events.values())
        ids = {j.job_id for j in jobs}
        for node, server in zip(nodes, servers, strict=True):
            served = {str(r["rid"]).split(".")[0] for r in server.chat_requests()} & ids
            assert served
            assert {node} == {ran_on(redis_client, j)[0] for j in served}
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert 0 == launcher.wait(30)
        for server in servers:
            server.stop()
    assert [0, 0] == [redis_client.exists(fleet_node_key(n)) for n in nodes]  # a clean stop leaves no trace
