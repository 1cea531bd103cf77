"""P3 (producer side): backfill enqueue rate — keys/s from listing an S3 prefix to messages in Redis.

Real SeaweedFS lists ``n`` objects (1,000-key pages, the S3 maximum), the real runner filters them, checks the
backpressure gate (cap above the total, so it never waits) and sends them in transactions with their checkpoint
into a queue no worker consumes. A dry run over the same prefix gives the listing-only rate for comparison.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from producers.backfill.checkpoint import BackfillStore
from producers.backfill.runner import BackfillRunner, Snapshot
from producers.broker import JobQueue
from producers.s3client import make_s3_client
from schemas.backfill import BackfillOptions, BackfillProgress, BackfillRecord
from schemas.models import DEFAULT_MODEL
from tests.benchmarks.harness import Figure, services, settings_from

BUCKET = "bench-backfill"
QUEUE = "guardq.bench.backfill"


class _Quiet:
    def update(self, snapshot: Snapshot) -> None:
        return None


def _runner(record: BackfillRecord, s3: object, queue: JobQueue | None, store: BackfillStore | None) -> BackfillRunner:
    return BackfillRunner(
        record,
        s3=s3,
        queue=queue,
        store=store,
        lease=None,
        max_pending=10**9,
        page_size=1000,
        stop=threading.Event(),
        reporter=_Quiet(),
    )


def run(workdir: Path, n: int = 10_000) -> list[Figure]:
    with services(workdir, s3=True) as svc:
        env = svc.env("http://127.0.0.1:9")
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # boto3 reads them from there
        settings = settings_from(env)
        s3 = make_s3_client(settings)
        s3.create_bucket(Bucket=BUCKET)
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=BUCKET, Key=f"p/{i:07d}.jpg", Body=b"\xff\xd8\xff"), range(n)))
        options = BackfillOptions(
            source=f"s3://{BUCKET}/p/", mode="list", bucket=BUCKET, prefix="p/", model=DEFAULT_MODEL, queue=QUEUE
        )
        queue = JobQueue(settings)
        store = BackfillStore(queue.redis)
        sent = _runner(store.create(options), s3, queue, store).run()
        assert n == queue.depth(QUEUE)
        listed = _runner(BackfillRecord("dry-run", options, BackfillProgress()), s3, None, None).run()
        queue.close()
    return [
        Figure(
            "P3",
            "backfill enqueue rate (list + filter + send)",
            sent.rate,
            "keys/s",
            target=5000.0,
            note=f"n={n}; listing alone (dry run) {listed.rate:,.0f} keys/s",
        )
    ]
