"""Shared benchmark plumbing: services, a worker process, CPU accounting, the results table."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from producers.broker import JobQueue
from schemas.job import ModerationJob
from schemas.settings import Settings
from tests.services.procs import ROOT, Service, start_redis, start_seaweed, start_worker
from worker.delivery.stream.reader import last_id, wait_for

RESULTS_DIR = ROOT / "bench-results"


@dataclass
class Figure:
    """One measured figure, optionally with a target and a direction."""

    bench: str
    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def proc_cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process and its reaped children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def proc_rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, amount = line.split(":", 1)
            values[key] = int(amount.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


@dataclass
class Services:
    redis: Service
    s3: Service | None
    workdir: Path

    def env(self, sglang_url: str, **extra: str) -> dict[str, str]:
        env = {
            "GUARDQ_REDIS_URL": self.redis.url,
            "GUARDQ_SGLANG_URL": sglang_url,
            "GUARDQ_UPLOAD_STORE": f"file://{self.workdir / 'uploads'}",
            "GUARDQ_LOG_FORMAT": "json",
            "GUARDQ_LOG_LEVEL": "WARNING",
            "GUARDQ_SGLANG_TIMEOUT_S": "120",
        }
        if self.s3 is not None:
            env |= {
                "GUARDQ_S3_ENDPOINT_URL": self.s3.url,
                "GUARDQ_S3_ADDRESSING_STYLE": "path",
                "AWS_ACCESS_KEY_ID": self.s3.extra["access_key"],
                "AWS_SECRET_ACCESS_KEY": self.s3.extra["secret_key"],
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        return env | extra


@contextmanager
def services(workdir: Path, *, s3: bool = False) -> Iterator[Services]:
    redis = start_redis(workdir / "redis")
    store = start_seaweed(workdir / "seaweed") if s3 else None
    try:
        yield Services(redis, store, workdir)
    finally:
        if store is not None:
            store.stop()
        redis.stop()


@contextmanager
def worker(env: dict[str, str], workdir: Path, *, name: str, args: list[str] | None = None) -> Iterator[Service]:
    service = start_worker(env | {"GUARDQ_LOG_LEVEL": "WARNING"}, workdir, name=name, args=args)
    try:
        yield service
    finally:
        service.stop()


def settings_from(env: dict[str, str]) -> Settings:
    values = {k[len("GUARDQ_") :].lower(): v for k, v in env.items() if k.startswith("GUARDQ_")}
    return Settings(**values)


def run_jobs(queue: JobQueue, jobs: list[ModerationJob], timeout_s: float) -> tuple[float, int]:
    """Enqueue ``jobs`` and wait for all terminal events; return (wall seconds from first send, events seen)."""
    after = last_id(queue.redis)
    start = time.perf_counter()
    for job in jobs:
        queue.send(job)
    seen = sum(1 for _ in wait_for(queue.redis, [j.job_id for j in jobs], after=after, timeout_s=timeout_s))
    return time.perf_counter() - start, seen


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_results(figures: list[Figure]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"results-{time.strftime('%Y%m%dT%H%M%S')}.json"
    payload = {"machine": machine(), "figures": [asdict(f) | {"passed": f.passed} for f in figures]}
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS_DIR / "latest.json").write_text(json.dumps(payload, indent=2))
    return path


def table(figures: list[Figure]) -> str:
    rows = [("bench", "figure", "value", "target", "result", "note")]
    for f in figures:
        target = "" if f.target is None else (">= " if f.higher_is_better else "<= ") + f"{f.target:g} {f.unit}"
        verdict = {None: "", True: "PASS", False: "MISS"}[f.passed]
        rows.append((f.bench, f.name, f"{f.value:,.3f} {f.unit}", target, verdict, f.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
