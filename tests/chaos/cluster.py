"""A small guardq deployment for fault injection: its own Redis, an SGLang test server and N worker processes."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from producers.broker import JobQueue
from schemas.job import ModerationJob
from schemas.settings import Settings
from tests.benchmarks.workload import distinct_jpegs, upload_jobs
from tests.services.procs import Service, free_port, start_redis, start_worker
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import last_id, wait_for


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


# What the fault-injection runs shorten to stay quick. A cluster with ``production_defaults=True`` sets none of
# them: a shortened timeout can hide the very stall a user would hit (a row with defaults for every failure mode).
SHORTENED = {
    "GUARDQ_RECONCILE_INTERVAL_S": "2",
    "GUARDQ_MAX_RETRIES": "4",
    "GUARDQ_RETRY_BACKOFF_BASE_S": "0.05",
    "GUARDQ_RETRY_BACKOFF_MAX_S": "0.5",
    "GUARDQ_SGLANG_TIMEOUT_S": "3",
    "GUARDQ_WORKER_CONCURRENCY": "8",
}


@dataclass
class Cluster:
    workdir: Path
    visibility_timeout_s: int = 8
    production_defaults: bool = False
    appendonly: bool = False
    fsync: str = "everysec"
    env_extra: dict[str, str] = field(default_factory=dict)
    redis_port: int = field(default_factory=free_port)
    redis: Service | None = None
    sim: SimulatedSGLang | None = None
    workers: dict[str, Service] = field(default_factory=dict)
    _queue: JobQueue | None = None

    def start(self, *, workers: int = 2, **sim_behaviour: object) -> Cluster:
        self.start_redis()
        self.sim = SimulatedSGLang(**sim_behaviour).start()  # type: ignore[arg-type]
        for i in range(workers):
            self.start_worker(f"w{i}")
        return self

    def start_redis(self) -> None:
        self.redis = start_redis(
            self.workdir / "redis", appendonly=self.appendonly, fsync=self.fsync, port=self.redis_port
        )

    def kill_redis(self) -> None:
        assert self.redis is not None
        self.redis.stop(signal.SIGKILL)

    @property
    def env(self) -> dict[str, str]:
        assert self.redis is not None and self.sim is not None
        base = {
            "GUARDQ_REDIS_URL": self.redis.url,
            "GUARDQ_SGLANG_URL": self.sim.url,
            "GUARDQ_UPLOAD_STORE": f"file://{self.workdir / 'uploads'}",
            "GUARDQ_LOG_FORMAT": "json",
            "GUARDQ_LOG_LEVEL": "WARNING",
            "GUARDQ_METRICS_PORT": "0",
        }
        if not self.production_defaults:
            base |= SHORTENED | {"GUARDQ_VISIBILITY_TIMEOUT_S": str(self.visibility_timeout_s)}
        return base | self.env_extra

    @property
    def settings(self) -> Settings:
        values = {k[len("GUARDQ_") :].lower(): v for k, v in self.env.items() if k.startswith("GUARDQ_")}
        return Settings(**values)

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            self._queue = JobQueue(self.settings)
        return self._queue

    def start_worker(self, name: str, **env: str) -> Service:
        """Start worker ``name``; ``env`` overrides this one worker's variables (a misconfigured worker)."""
        previous = self.workers.pop(name, None)
        if previous is not None:  # restarted under the same name: the old process must not be left running
            previous.stop()
        self.workers[name] = start_worker(self.env | env, self.workdir / "workers", name=name)
        return self.workers[name]

    def describe(self) -> dict[str, object]:
        """The settings a reader needs to judge this cluster's figures."""
        settings = self.settings
        described: dict[str, object] = {
            "workers": len(self.workers),
            "threads_per_worker": settings.worker_concurrency,
            "visibility_timeout_s": settings.visibility_timeout_s,
            "max_retries": settings.max_retries,
            "sglang_timeout_s": settings.sglang_timeout_s,
            "redis_aof": f"appendfsync {self.fsync}" if self.appendonly else "off",
        }
        if self.production_defaults:
            described["defaults"] = "production (nothing shortened)"
        return described

    def worker_rss_mb(self) -> dict[str, float]:
        return {name: rss_mb(service.proc.pid) for name, service in self.workers.items()}

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group: no warm shutdown, no acks, no requeue."""
        service = self.workers.pop(name)
        os.killpg(service.proc.pid, signal.SIGKILL)
        service.proc.wait(10)

    def jobs(self, count: int, seed: int = 0) -> list[ModerationJob]:
        return upload_jobs(self.settings, distinct_jpegs(count, seed=seed))

    def send(self, jobs: list[ModerationJob]) -> str:
        after = last_id(self.queue.redis)
        for job in jobs:
            self.queue.send(job)
        return after

    def wait_all(self, jobs: list[ModerationJob], after: str, timeout_s: float) -> int:
        return sum(1 for _ in wait_for(self.queue.redis, [j.job_id for j in jobs], after=after, timeout_s=timeout_s))

    def stop(self) -> None:
        for name in list(self.workers):
            self.workers.pop(name).stop()
        if self._queue is not None:
            self._queue.close()
        if self.sim is not None:
            self.sim.stop()
        if self.redis is not None:
            self.redis.stop()
