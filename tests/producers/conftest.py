"""Fixtures for producer tests: a prefix of a few thousand objects, reading Celery messages out of a queue, the
API served by uvicorn on a free port."""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis as redis_lib
import structlog

from producers.api.auth import ApiKeyStore
from producers.cli import common as cli_common
from schemas.settings import Settings
from tests.conftest import BUCKET
from tests.services.procs import free_port, wait_until

BULK_OBJECTS = 2000


@dataclass(frozen=True)
class Prefix:
    bucket: str
    prefix: str
    keys: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def reset_cli_state() -> None:
    """Forget what an in-process ``guardq`` command set up for the process: the cached settings and queue, and the
    logging it pointed at CliRunner's stderr (closed once the command returns; later log lines would fail)."""
    cli_common.settings.cache_clear()
    cli_common.job_queue.cache_clear()
    structlog.reset_defaults()
    logging.getLogger().handlers = []


def upload(s3_client: Any, keys: list[str], body: bytes = b"\xff\xd8\xff tiny") -> None:
    """Put many small objects concurrently (10 threads: the client pool size)."""
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda k: s3_client.put_object(Bucket=BUCKET, Key=k, Body=body), keys))


@pytest.fixture(scope="session")
def bulk_prefix(s3_client: Any) -> Prefix:
    """2,000 tiny objects under one prefix, uploaded once per session (backfills only list them)."""
    prefix = f"bulk-{uuid.uuid4().hex[:8]}/"
    keys = [f"{prefix}img-{i:05d}.jpg" for i in range(BULK_OBJECTS)]
    upload(s3_client, keys)
    return Prefix(BUCKET, prefix, tuple(sorted(keys)))


@pytest.fixture
def private_queue(redis_client: redis_lib.Redis) -> Iterator[str]:
    """A queue name no worker consumes, so tests can count exactly what was enqueued; deleted afterwards."""
    name = f"guardq.test.{uuid.uuid4().hex[:8]}"
    yield name
    redis_client.delete(name)


class DepthPeak:
    """The highest ``LLEN`` seen so far by :func:`sampled_peak_depth`."""

    value = 0


@contextmanager
def sampled_peak_depth(redis_url: str, queue: str, every_s: float = 0.002) -> Iterator[DepthPeak]:
    """Sample the queue's depth every ``every_s`` seconds in a thread while the block runs; yields the peak."""
    peak, done = DepthPeak(), threading.Event()

    def sample() -> None:
        with redis_lib.Redis.from_url(redis_url) as probe:
            while not done.is_set():
                peak.value = max(peak.value, int(probe.llen(queue)))
                done.wait(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join(5)


def queued_jobs(client: redis_lib.Redis, queue: str) -> list[dict[str, Any]]:
    """The job (the task's one argument) of every Celery message waiting in ``queue``, oldest first."""
    jobs = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # kombu LPUSHes; consumers pop from the right
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["id"] == args[0]["job_id"]
        jobs.append(args[0])
    return jobs


class ApiServer:
    """The real API app served by uvicorn on a free loopback port, in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from producers.api.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self._server.started, 20, "uvicorn")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@pytest.fixture(scope="module")
def api_settings(settings: Settings) -> Settings:
    """Test settings plus API limits small enough to exercise (64 KiB uploads, a loopback SNS stand-in host)."""
    return settings.model_copy(
        update={"api_max_upload_bytes": 64 * 1024, "sns_confirm_hosts": ["127.0.0.2"], "api_rate_limit": 10_000}
    )


@pytest.fixture(scope="module")
def api(api_settings: Settings) -> Iterator[ApiServer]:
    server = ApiServer(api_settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(api: ApiServer) -> ApiKeyStore:
    return ApiKeyStore(api.app.state.services.queue.redis)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
