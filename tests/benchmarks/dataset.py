"""Dataset mode: per-image cost against the plain S3-object backfill on the same images, and memory while
walking 1 GiB tar shards.

1. **Overhead.** The same ``n`` distinct JPEGs are stored three ways in SeaweedFS: one object each, WebDataset tar
   shards (with sidecars), and Parquet files with the bytes in a column (row groups of 100). Each layout is
   backfilled by the real runner into the bulk queue of one real worker (simulated SGLang without latency, verdict
   cache off so every layout does the same work); the figures are the worker's CPU seconds per image and the
   wall time per image from the first job sent to the last verdict, each layout run ``rounds`` times interleaved
   (the median). Target: a tar member or Parquet cell costs at most 10 % more worker CPU than an object.
2. **Memory.** Two 1 GiB tar shards (1 MiB members; 16 KiB members) are walked as the backfill walks them, each in
   a fresh process: peak RSS above that process's baseline, rows/s, and how many bytes the walk read.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from producers.backfill.checkpoint import BackfillStore
from producers.backfill.runner import BackfillRunner, Snapshot
from producers.broker import JobQueue
from producers.dataset.runner import DatasetRunner
from producers.s3client import make_s3_client
from schemas.backfill import BackfillOptions
from schemas.job import Priority
from schemas.keys import queue_name
from schemas.models import get_model
from tests.benchmarks.harness import ROOT, Figure, proc_cpu_s, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, start_server
from tests.producers.datasets import image_table, img2dataset_sample, sidecar, tar_shard
from worker.delivery.stream.reader import last_id, read_events

BUCKET = "bench-dataset"
LAYOUTS = {"objects": "obj/", "webdataset": "wds/", "parquet": "pq/"}
GIB = 1 << 30


class _Quiet:
    def update(self, snapshot: Snapshot) -> None:
        return None


def _upload(s3: Any, blobs: list[bytes], shards: int) -> None:
    keys = [f"{i:06d}" for i in range(len(blobs))]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(lambda i: s3.put_object(Bucket=BUCKET, Key=f"obj/{keys[i]}.jpg", Body=blobs[i]), range(len(blobs)))
        )
    per = -(-len(blobs) // shards)
    for n in range(shards):
        part = list(zip(keys, blobs, strict=True))[n * per : (n + 1) * per]
        tar = tar_shard(img2dataset_sample(k, b) for k, b in part)
        s3.put_object(Bucket=BUCKET, Key=f"wds/{n:05d}.tar", Body=tar)
        s3.put_object(Bucket=BUCKET, Key=f"wds/{n:05d}.parquet", Body=sidecar((k, "success") for k, _ in part))
        s3.put_object(Bucket=BUCKET, Key=f"pq/{n:05d}.parquet", Body=image_table(part, row_group_size=100))


def _backfill(queue: JobQueue, s3: Any, layout: str, target: str) -> tuple[str, int, float]:
    """Send every image of one layout; return (backfill id, jobs, enqueue rate)."""
    extra: dict[str, Any] = {} if layout == "objects" else {"format": layout}
    if layout == "parquet":
        extra["image_column"] = "jpg"
    prefix = LAYOUTS[layout]
    options = BackfillOptions(
        source=f"s3://{BUCKET}/{prefix}",
        mode="list",
        bucket=BUCKET,
        prefix=prefix,
        model=queue.settings.model,
        queue=target,
        **extra,
    )
    store = BackfillStore(queue.redis)
    record = store.create(options)
    runner_class = BackfillRunner if layout == "objects" else DatasetRunner
    runner = runner_class(
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
    stats = runner.run()
    return record.backfill_id, record.progress.enqueued, stats.rate


def _wait_all(queue: JobQueue, backfill_id: str, jobs: int, after: str) -> int:
    seen = 0
    for _, event in read_events(queue.redis, after=after, deadline=time.monotonic() + 600):
        seen += int(event.data.backfill_id == backfill_id)
        if seen == jobs:
            break
    return seen


def _overhead(workdir: Path, n: int, rounds: int) -> list[Figure]:
    with services(workdir, s3=True) as svc:
        sim = start_server(max_running=None, latency_s=0.0)
        try:
            env = svc.env(
                sim.url,
                GUARDQ_WORKER_CONCURRENCY="16",
                GUARDQ_VERDICT_CACHE_TTL_S="0",
                GUARDQ_METRICS_PORT="0",
                GUARDQ_RECONCILE_INTERVAL_S="0",
            )
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            settings = settings_from(env)
            s3 = make_s3_client(settings)
            s3.create_bucket(Bucket=BUCKET)
            _upload(s3, distinct_jpegs(n, size=(320, 240)), shards=4)
            queue = JobQueue(settings)
            target = queue_name(get_model(settings.model), Priority.BULK)
            cpu: dict[str, list[float]] = {k: [] for k in LAYOUTS}
            wall: dict[str, list[float]] = {k: [] for k in LAYOUTS}
            rate: dict[str, list[float]] = {k: [] for k in LAYOUTS}
            with worker(env, workdir, name="dataset") as service:
                for _ in range(rounds):
                    for layout in LAYOUTS:
                        after = last_id(queue.redis)
                        cpu0, t0 = proc_cpu_s(service.proc.pid), time.perf_counter()
                        backfill_id, jobs, enqueue_rate = _backfill(queue, s3, layout, target)
                        assert jobs == n and _wait_all(queue, backfill_id, jobs, after) == n
                        wall[layout].append((time.perf_counter() - t0) / n)
                        cpu[layout].append((proc_cpu_s(service.proc.pid) - cpu0) / n)
                        rate[layout].append(enqueue_rate)
            queue.close()
        finally:
            sim.stop()
    med = {k: (statistics.median(cpu[k]), statistics.median(wall[k]), statistics.median(rate[k])) for k in LAYOUTS}
    base_cpu, base_wall, _ = med["objects"]
    figures = [
        Figure(
            "dataset",
            "worker CPU/image, one S3 object each (baseline)",
            base_cpu * 1000,
            "ms",
            note=f"n={n} x {rounds}; {base_wall * 1000:.2f} ms wall/image; enqueue {med['objects'][2]:,.0f}/s",
            extra={"cpu_ms": [c * 1000 for c in cpu["objects"]]},
        )
    ]
    for layout, label in (("webdataset", "tar member (ranged GET)"), ("parquet", "Parquet cell (row group read)")):
        layout_cpu, layout_wall, layout_rate = med[layout]
        figures.append(
            Figure(
                "dataset",
                f"worker CPU overhead/image, {label}",
                (layout_cpu / base_cpu - 1) * 100,
                "%",
                target=10.0,
                higher_is_better=False,
                note=(
                    f"{layout_cpu * 1000:.3f} ms CPU, {layout_wall * 1000:.2f} ms wall/image "
                    f"({(layout_wall / base_wall - 1) * 100:+.1f} % wall); enqueue {layout_rate:,.0f} rows/s"
                ),
                extra={"cpu_ms": [c * 1000 for c in cpu[layout]], "wall_ms": [w * 1000 for w in wall[layout]]},
            )
        )
    return figures


def _big_tar(path: Path, member_bytes: int) -> int:
    """A 1 GiB tar on disk (a benchmark fixture, uploaded in parts): ``member_bytes`` JPEG-sized members."""
    block = os.urandom(member_bytes)
    count = GIB // (member_bytes + 512)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"{i:09d}.jpg")
            info.size = member_bytes
            tar.addfile(info, io.BytesIO(block))
    return count


def _walk(env: dict[str, str], key: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.dataset_walk", BUCKET, key],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def _memory(workdir: Path) -> list[Figure]:
    from boto3.s3.transfer import TransferConfig

    figures = []
    with services(workdir, s3=True) as svc:
        env = svc.env("http://127.0.0.1:9")
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        s3 = make_s3_client(settings_from(env))
        s3.create_bucket(Bucket=BUCKET)
        for member in (1 << 20, 16 << 10):
            local = workdir / "big.tar"
            members = _big_tar(local, member)
            key = f"big/{member >> 10}k.tar"
            s3.upload_file(str(local), BUCKET, key, Config=TransferConfig(multipart_chunksize=64 << 20))
            local.unlink()
            walked = _walk(env, key)
            assert walked["rows"] == members
            growth = walked["peak_rss_mb"] - walked["baseline_rss_mb"]
            figures.append(
                Figure(
                    "dataset",
                    f"RSS growth walking a 1 GiB shard of {member >> 10} KiB members",
                    growth,
                    "MiB",
                    target=64.0,
                    higher_is_better=False,
                    note=(
                        f"{members:,} rows in {walked['seconds']:.1f} s ({members / walked['seconds']:,.0f} rows/s); "
                        f"read {walked['bytes_read'] / (1 << 20):,.0f} MiB in {walked['requests']:,} GETs; "
                        f"peak {walked['peak_rss_mb']:.0f} MiB"
                    ),
                    extra=walked,
                )
            )
            s3.delete_object(Bucket=BUCKET, Key=key)
    return figures


def run(workdir: Path, n: int = 1200, rounds: int = 3) -> list[Figure]:
    return _overhead(workdir / "overhead", n, rounds) + _memory(workdir / "memory")
