"""Shared fixtures: real Redis, SeaweedFS S3, the SGLang-protocol test server and a real guardq worker.

Services are started once per test session on free loopback ports with their own data directories; the Redis
is our own ``redis-server`` unless ``GUARDQ_TEST_REDIS_URL`` points at one. Tests isolate by unique job ids
rather than by flushing shared state.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from PIL import Image

from producers.broker import JobQueue
from schemas.events import CloudEvent
from schemas.job import ModerationJob
from schemas.settings import Settings
from tests.services.procs import Service, start_redis, start_seaweed, start_worker, stop_leftovers
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import last_id, wait_for

BUCKET = "guardq-test"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No worker, server or store outlives the test session (each one is ~100 MB; a run used to leave dozens)."""
    left = stop_leftovers()
    if left:
        print(f"\n[guardq tests] stopped {left} process(es) a test left running", flush=True)


def image_bytes(
    color: tuple[int, int, int] = (40, 120, 200), size: tuple[int, int] = (64, 48), fmt: str = "JPEG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_url(session_dir: Path) -> Iterator[str]:
    external = os.environ.get("GUARDQ_TEST_REDIS_URL")
    if external:
        yield external
        return
    service = start_redis(session_dir / "redis")
    yield service.url
    service.stop()


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def sglang() -> Iterator[SimulatedSGLang]:
    sim = SimulatedSGLang().start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(sglang: SimulatedSGLang) -> Iterator[SimulatedSGLang]:
    """The session's SGLang test server, reset to default behaviour before and after the test."""
    sglang.reset()
    yield sglang
    sglang.reset()


@pytest.fixture(scope="session")
def s3(session_dir: Path) -> Iterator[Service]:
    service = start_seaweed(session_dir / "seaweed")
    client = s3_client_for(service)
    client.create_bucket(Bucket=BUCKET)
    yield service
    service.stop()


def s3_client_for(service: Service) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=service.url,
        region_name="us-east-1",
        aws_access_key_id=service.extra["access_key"],
        aws_secret_access_key=service.extra["secret_key"],
    )


@pytest.fixture(scope="session")
def s3_client(s3: Service) -> Any:
    return s3_client_for(s3)


@pytest.fixture(scope="session")
def worker_env(redis_url: str, sglang: SimulatedSGLang, s3: Service, session_dir: Path) -> dict[str, str]:
    return {
        "GUARDQ_REDIS_URL": redis_url,
        "GUARDQ_SGLANG_URL": sglang.url,
        "GUARDQ_S3_ENDPOINT_URL": s3.url,
        "GUARDQ_S3_ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": s3.extra["access_key"],
        "AWS_SECRET_ACCESS_KEY": s3.extra["secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "GUARDQ_UPLOAD_STORE": f"file://{session_dir / 'uploads'}",
        "GUARDQ_URL_ALLOWED_NETWORKS": '["127.0.0.2/32"]',
        "GUARDQ_MAX_RETRIES": "3",
        "GUARDQ_RETRY_BACKOFF_BASE_S": "0.05",
        "GUARDQ_RETRY_BACKOFF_MAX_S": "0.2",
        "GUARDQ_SGLANG_TIMEOUT_S": "2",
        "GUARDQ_FETCH_TIMEOUT_S": "5",
        "GUARDQ_WORKER_CONCURRENCY": "8",
        "GUARDQ_VISIBILITY_TIMEOUT_S": "60",
        "GUARDQ_LOG_FORMAT": "json",
        "GUARDQ_RECONCILE_INTERVAL_S": "0",  # tests share one Redis and plant lost messages on purpose
        # The shared worker runs without the verdict cache: tests here count SGLang requests per job.
        # tests/worker/test_verdict_cache_integration.py starts its own worker with the cache on.
        "GUARDQ_VERDICT_CACHE_TTL_S": "0",
    }


@pytest.fixture(scope="session")
def settings(worker_env: dict[str, str]) -> Settings:
    keys = {k[len("GUARDQ_") :].lower(): v for k, v in worker_env.items() if k.startswith("GUARDQ_")}
    keys["url_allowed_networks"] = ["127.0.0.2/32"]
    return Settings(**keys)


@pytest.fixture(scope="session")
def worker(worker_env: dict[str, str], session_dir: Path) -> Iterator[Service]:
    """One real worker process (threads pool) shared by the integration tests."""
    service = start_worker(worker_env, session_dir / "workers")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def job_queue(settings: Settings) -> Iterator[JobQueue]:
    queue = JobQueue(settings)
    yield queue
    queue.close()


class Runner:
    """Enqueue jobs through the real producer path and collect their terminal events."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def run(self, *jobs: ModerationJob, timeout_s: float = 30) -> dict[str, CloudEvent]:
        start = last_id(self.queue.redis)
        for job in jobs:
            self.queue.send(job)
        events = {
            e.data.job_id: e
            for e in wait_for(self.queue.redis, [j.job_id for j in jobs], after=start, timeout_s=timeout_s)
        }
        missing = [j.job_id for j in jobs if j.job_id not in events]
        assert not missing, f"no terminal event for {missing}"
        return events

    def one(self, job: ModerationJob, timeout_s: float = 30) -> CloudEvent:
        return self.run(job, timeout_s=timeout_s)[job.job_id]

    def events_for(self, job_id: str) -> list[CloudEvent]:
        """Every event on the stream for this job (to prove there is exactly one)."""
        out = []
        for _, fields in self.queue.redis.xrange("guardq:verdicts"):
            event = CloudEvent.model_validate_json(fields[b"event"])
            if event.data.job_id == job_id:
                out.append(event)
        return out


@pytest.fixture
def runner(worker: Service, job_queue: JobQueue, sim: SimulatedSGLang) -> Runner:
    return Runner(job_queue)
