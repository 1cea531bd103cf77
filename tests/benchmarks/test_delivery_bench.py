"""Delivery throughput (``make bench``, or ``pytest -m bench tests/benchmarks/test_delivery_bench.py -s``).

- webhook deliveries/s: events published on the stream -> dispatcher -> schedule -> Celery webhook worker ->
  a local receiver that verifies every signature with the ``standardwebhooks`` library;
- cache-hit jobs/s: jobs for bytes already in the verdict cache, through a real worker, with zero SGLang requests.

Writes ``bench-results/delivery.json``. Sizes: ``GUARDQ_BENCH_WEBHOOKS`` (default 1000) and
``GUARDQ_BENCH_CACHE_JOBS`` (default 500).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.broker import JobQueue
from schemas.job import ImageRef, ModerationJob
from schemas.keys import TASK_MODERATE
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET
from tests.services.procs import ROOT, start_worker, wait_until
from tests.sglang_server import SimulatedSGLang
from tests.worker.delivery.factory import make_event, publish
from tests.worker.delivery.receiver import Receiver
from tests.worker.delivery.services import start_webhook_worker, webhook_settings
from worker.delivery.stream.reader import last_id, wait_for
from worker.delivery.webhooks.registry import SubscriptionRegistry

pytestmark = [pytest.mark.bench, pytest.mark.integration]
RESULTS = ROOT / "bench-results" / "delivery.json"


def record(name: str, values: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = values
    RESULTS.write_text(json.dumps(data, indent=2))
    print(f"\n{name}: {json.dumps(values)}")


def test_webhook_delivery_throughput(
    redis_client: redis.Redis, settings: Settings, worker_env: dict[str, str], session_dir: Path
) -> None:
    n = int(os.environ.get("GUARDQ_BENCH_WEBHOOKS", "1000"))
    concurrency = os.environ.get("GUARDQ_BENCH_WEBHOOK_CONCURRENCY", "32")
    receiver = Receiver().start()
    service = start_webhook_worker({**worker_env, "GUARDQ_WEBHOOK_CONCURRENCY": concurrency}, session_dir / "bench-wh")
    try:
        tenant = f"bench{uuid.uuid4().hex[:8]}"
        sub = SubscriptionRegistry(redis_client, webhook_settings(settings)).add(
            url=receiver.url("/bench"), tenant=tenant
        )
        receiver.route("/bench", secret=sub.secret)
        events = [make_event(tenant=tenant) for _ in range(n)]
        start = time.perf_counter()
        pipe = redis_client.pipeline(transaction=False)
        for event in events:
            publish(pipe, event)  # type: ignore[arg-type]
        pipe.execute()
        wait_until(lambda: len(receiver.accepted("/bench")) >= n, 300, f"{n} deliveries")
        elapsed = time.perf_counter() - start
    finally:
        service.stop()
        receiver.stop()
    assert n == len({r.webhook_id for r in receiver.accepted("/bench")})
    assert all(r.verified for r in receiver.requests("/bench"))
    record(
        "webhook_delivery",
        {
            "deliveries": n,
            "seconds": round(elapsed, 2),
            "deliveries_per_s": round(n / elapsed, 1),
            "concurrency": int(concurrency),
        },
    )


def test_cache_hit_throughput(
    worker_env: dict[str, str], session_dir: Path, job_queue: JobQueue, sglang: SimulatedSGLang, s3_client: Any
) -> None:
    n = int(os.environ.get("GUARDQ_BENCH_CACHE_JOBS", "500"))
    queue = "guardq.bench-cache"
    env = {**worker_env, "GUARDQ_VERDICT_CACHE_TTL_S": "3600", "GUARDQ_WORKER_CONCURRENCY": "16"}
    service = start_worker(env, session_dir / "bench-cache", name="bench-cache", args=[f"--queues={queue}"])
    try:
        key = f"bench/{uuid.uuid4().hex}.jpg"
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=images.solid((90, 140, 70), (640, 480)))
        ref = ImageRef.parse(f"s3://{BUCKET}/{key}")

        def run(jobs: list[ModerationJob]) -> float:
            start_id = last_id(job_queue.redis)
            start = time.perf_counter()
            for job in jobs:
                job_queue.celery.send_task(TASK_MODERATE, args=[job.to_message()], queue=queue, task_id=job.job_id)
            got = list(wait_for(job_queue.redis, [j.job_id for j in jobs], after=start_id, timeout_s=300))
            assert len(jobs) == len(got)
            assert all(e.data.cached for e in got) or len(jobs) == 1
            return time.perf_counter() - start

        sglang.reset()
        run([ModerationJob(image=ref)])  # prime the cache: the one inference
        assert 1 == len(sglang.chat_requests())
        elapsed = run([ModerationJob(image=ref) for _ in range(n)])
        assert 1 == len(sglang.chat_requests())  # zero inference calls for the n hits
    finally:
        service.stop()
    record(
        "cache_hit",
        {"jobs": n, "seconds": round(elapsed, 2), "jobs_per_s": round(n / elapsed, 1), "inference_calls": 0},
    )
