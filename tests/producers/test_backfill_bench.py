"""Backfill figures (``make bench`` style, not part of ``make test``): enqueue rate and peak queue depth.

Run: ``.venv/bin/pytest -m bench tests/producers/test_backfill_bench.py -s``. Prints a table and writes
``bench-results/backfill.json``. Everything is real: SeaweedFS lists the objects, Redis holds the queue, and in
the backpressure run the test worker (SGLang test server behind it) drains the bulk queue.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from producers.backfill.checkpoint import BackfillStore
from producers.backfill.runner import BackfillRunner
from producers.broker import JobQueue
from schemas.backfill import BackfillProgress, BackfillRecord
from schemas.job import Priority
from schemas.keys import queue_name
from schemas.models import get_model
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET, Runner
from tests.producers.conftest import Prefix, sampled_peak_depth, upload
from tests.producers.test_backfill_integration import Recorder, options_for, run_backfill
from tests.services.procs import ROOT

pytestmark = [pytest.mark.bench, pytest.mark.integration, pytest.mark.timeout(900)]

RATE_KEYS = int(os.environ.get("GUARDQ_BENCH_BACKFILL_KEYS", "10000"))
DRAIN_KEYS = int(os.environ.get("GUARDQ_BENCH_DRAIN_KEYS", "1000"))
CAP = int(os.environ.get("GUARDQ_BENCH_MAX_PENDING", "100"))


def _dry_record(options: Any) -> BackfillRecord:
    return BackfillRecord("dry-run", options, BackfillProgress())


def _report(results: dict[str, Any]) -> None:
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "backfill.json").write_text(json.dumps(results, indent=2))
    print("\nbackfill benchmark (SeaweedFS + Redis on this machine)")
    for name, value in results.items():
        print(f"  {name:<42} {value}")


def test_backfill_enqueue_rate_and_peak_queue_depth_under_backpressure(
    s3_client: Any, job_queue: JobQueue, runner: Runner, settings: Settings
) -> None:
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}

    # 1. Enqueue rate: no consumer, cap above the total, 1,000-key pages (the S3 maximum).
    prefix = f"bench-{uuid.uuid4().hex[:8]}/"
    keys = [f"{prefix}img-{i:06d}.jpg" for i in range(RATE_KEYS)]
    upload(s3_client, keys)
    parked = f"guardq.bench.{uuid.uuid4().hex[:8]}"
    try:
        record = BackfillStore(job_queue.redis).create(options_for(Prefix(BUCKET, prefix, ()), parked))
        state, bf = run_backfill(record, job_queue, s3_client, page_size=1000, max_pending=RATE_KEYS + 1)
        assert "finished" == state
        assert RATE_KEYS == job_queue.redis.llen(parked)
    finally:
        job_queue.redis.delete(parked)
    dry = BackfillRunner(
        _dry_record(options_for(Prefix(BUCKET, prefix, ()), parked)),
        s3=s3_client,
        queue=None,
        store=None,
        lease=None,
        max_pending=1,
        page_size=1000,
        stop=threading.Event(),
        reporter=Recorder(),
    )
    dry.run()
    results["list_only_rate_keys_per_s (dry run)"] = round(dry.stats.rate, 1)
    results["enqueue_keys"] = RATE_KEYS
    results["enqueue_seconds"] = round(bf.stats.seconds, 2)
    results["enqueue_rate_keys_per_s"] = round(bf.stats.rate, 1)

    # 2. Backpressure: real worker draining the bulk queue, --max-pending CAP, queue depth sampled every 2 ms.
    prefix = f"bench-bp-{uuid.uuid4().hex[:8]}/"
    upload(s3_client, [f"{prefix}{i:05d}.jpg" for i in range(DRAIN_KEYS)], body=images.solid())
    queue = queue_name(get_model(settings.model), Priority.BULK)
    record = BackfillStore(job_queue.redis).create(options_for(Prefix(BUCKET, prefix, ()), queue))
    with sampled_peak_depth(settings.redis_url, queue) as peak:
        state, bf = run_backfill(record, job_queue, s3_client, page_size=1000, max_pending=CAP)
    assert "finished" == state
    assert peak.value <= CAP
    results["backpressure_keys"] = DRAIN_KEYS
    results["backpressure_max_pending"] = CAP
    results["backpressure_peak_depth_sampled"] = peak.value
    results["backpressure_peak_depth_producer_bound"] = bf.stats.peak_depth
    results["backpressure_waits"] = bf.stats.waits
    results["backpressure_rate_keys_per_s (worker-bound)"] = round(bf.stats.rate, 1)
    _report(results)
    assert Path(ROOT / "bench-results" / "backfill.json").exists()
