"""Run ``guardq worker --gpus ...`` with the SGLang test server substituted for SGLang, one per fake GPU.

The launcher is the product; only its server command (``--server-cmd``) points at ``python -m tests.sglang_server``,
which accepts and ignores SGLang's flags and prints ``READY <url> gpu=<CUDA_VISIBLE_DEVICES>``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from producers.broker import JobQueue
from schemas.events import CloudEvent
from schemas.job import ImageRef, ModerationJob
from schemas.keys import FLEET_NODES, VERDICT_STREAM, fleet_node_key, job_key, model_queues
from schemas.models import get_model
from tests import images
from tests.conftest import BUCKET
from tests.services.procs import ROOT, free_ports, wait_until
from worker.delivery.stream.reader import last_id, wait_for

TEST_SERVER_CMD = f"{sys.executable} -m tests.sglang_server"


@dataclass
class Fleet:
    proc: subprocess.Popen[bytes]
    client: redis.Redis[bytes]
    nodes: list[str]
    log_dir: Path
    base_port: int

    def node(self, name: str) -> dict[str, str]:
        raw = self.client.hgetall(fleet_node_key(name))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def server_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.base_port + index}"

    def requests(self, index: int) -> list[dict[str, Any]]:
        """Chat requests the server of slot ``index`` received (its own request log)."""
        body = httpx.get(f"{self.server_url(index)}/_control/requests", timeout=5).json()
        return [r for r in body["requests"] if r["path"] == "/v1/chat/completions"]

    def serving(self, name: str) -> bool:
        """The node's server is up and its worker takes jobs."""
        node = self.node(name)
        return node.get("server") == "up" and node.get("consuming") == "1" and node.get("server_state") == "ready"

    def wait_serving(self, timeout_s: float = 30) -> None:
        for name in self.nodes:
            try:
                wait_until(lambda n=name: self.serving(n), timeout_s, f"fleet node {name}", self.proc)
            except (TimeoutError, RuntimeError) as exc:
                raise type(exc)(f"{exc}\n{self.diagnosis()}") from None

    def diagnosis(self) -> str:
        """Each node's registry entry and the tail of every log: what a failed start-up needs to be understood."""
        parts = [f"{name}: {self.node(name)}" for name in self.nodes]
        for path in sorted(self.log_dir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def terminate(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_fleet(
    env: dict[str, str],
    workdir: Path,
    *,
    gpus: str,
    model: str,
    concurrency: int = 4,
    server_args: str = "",
    extra_env: dict[str, str] | None = None,
) -> Fleet:
    """Launch the fleet and return once every node's server is ready and its worker consumes."""
    slots = len(gpus.split(","))
    base_port = free_ports(slots)
    metrics_port = free_ports(slots)
    log_dir = workdir / f"fleet-{base_port}"
    full_env = {
        **os.environ,
        **env,
        "PYTHONUNBUFFERED": "1",
        "GUARDQ_SERVER_WATCH_INTERVAL_S": "0.2",
        "GUARDQ_HEARTBEAT_INTERVAL_S": "0.5",
        "GUARDQ_FLEET_PROBE_INTERVAL_S": "1",
        "GUARDQ_METRICS_HOST": "127.0.0.1",
        "GUARDQ_SGLANG_READY_TIMEOUT_S": "60",
        **(extra_env or {}),
    }
    args = [
        sys.executable,
        "-m",
        "worker",
        "--gpus",
        gpus,
        "--model",
        model,
        "--server-cmd",
        TEST_SERVER_CMD,
        "--base-port",
        str(base_port),
        "--metrics-port",
        str(metrics_port),
        "--concurrency",
        str(concurrency),
        "--log-dir",
        str(log_dir),
        "--node-host",
        "testhost",
    ]
    if server_args:
        args += ["--server-args", server_args]
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "launcher.log").open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    nodes = [f"gpu{g}@testhost" for g in gpus.split(",")]
    fleet = Fleet(proc, redis.Redis.from_url(env["GUARDQ_REDIS_URL"]), nodes, log_dir, base_port)
    try:
        fleet.wait_serving(60)
    except Exception:
        fleet.terminate()
        raise
    return fleet


def clear_registry(client: redis.Redis[bytes]) -> None:
    for member in client.zrange(FLEET_NODES, 0, -1):
        client.delete(fleet_node_key(member.decode()))
    client.delete(FLEET_NODES)


def s3_jobs(s3_client: Any, count: int, model: str | None, **job_fields: Any) -> list[ModerationJob]:
    """``count`` jobs for ``model``, each on its own small S3 object (one upload, many keys)."""
    data = images.solid((40, 120, 200), (64, 48))
    jobs = []
    for _ in range(count):
        key = f"fleet/{uuid.uuid4().hex}.jpg"
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
        jobs.append(ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/{key}"), model=model, **job_fields))
    return jobs


def send_and_collect(queue: JobQueue, jobs: list[ModerationJob], timeout_s: float = 30) -> dict[str, CloudEvent]:
    """Enqueue the jobs and return their terminal events; fails naming the jobs without one."""
    start = last_id(queue.redis)
    for job in jobs:
        queue.send(job)
    return collect(queue, [j.job_id for j in jobs], after=start, timeout_s=timeout_s)


def collect(queue: JobQueue, job_ids: list[str], *, after: str, timeout_s: float) -> dict[str, CloudEvent]:
    events = {e.data.job_id: e for e in wait_for(queue.redis, job_ids, after=after, timeout_s=timeout_s)}
    missing = [j for j in job_ids if j not in events]
    assert not missing, f"no terminal event for {len(missing)} job(s), e.g. {missing[:3]}"
    return events


def ran_on(client: redis.Redis[bytes], job_id: str) -> tuple[str, str]:
    """(worker node, attempts) recorded for a job."""
    worker, attempts = client.hmget(job_key(job_id), ["worker", "attempts"])
    return (worker or b"").decode(), (attempts or b"").decode()


def events_per_job(client: redis.Redis[bytes], job_ids: set[str]) -> dict[str, int]:
    """How many events the stream holds for each of ``job_ids``."""
    counts = dict.fromkeys(job_ids, 0)
    for _, fields in client.xrange(VERDICT_STREAM):
        job_id = json.loads(fields[b"event"])["data"]["job_id"]
        if job_id in counts:
            counts[job_id] += 1
    return counts


def purge(client: redis.Redis[bytes], model: str) -> None:
    """Empty a model's queues (tests that share a Redis isolate by model)."""
    client.delete(*model_queues(get_model(model)))
