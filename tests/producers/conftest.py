"""Fixtures for producer tests: a prefix of a few thousand objects, reading Celery messages out of a queue."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import redis as redis_lib

from tests.conftest import BUCKET

BULK_OBJECTS = 2000


@dataclass(frozen=True)
class Prefix:
    bucket: str
    prefix: str
    keys: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


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


def queued_jobs(client: redis_lib.Redis, queue: str) -> list[dict[str, Any]]:
    """The job (the task's one argument) of every Celery message waiting in ``queue``, oldest first."""
    jobs = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # kombu LPUSHes; consumers pop from the right
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["id"] == args[0]["job_id"]
        jobs.append(args[0])
    return jobs
