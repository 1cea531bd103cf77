"""Redis state per job, measured: retained bytes per finished job, the memory curve of a long run, sweep cost.

- ``retained``: 500 interactive jobs (distinct images, default settings: verdict cache on) through one worker and an
  instant SGLang test server; what a finished job retains is what Redis frees when its record and its cached verdict
  are deleted (allocation-exact, key-space and expiry tables included). As a cross-check, the growth of what Redis
  holds for data (:func:`_state`) less the verdict stream's own ``MEMORY USAGE``: it agrees at 100,000 jobs (the
  curve) but swings by ±150 B a job at 500 (allocator and table effects no deletion gives back), so it is a note.
- ``curve``: ``GUARDQ_BENCH_STATE_JOBS`` (100,000) jobs as a backfill (bulk queue, ``backfill_id``) or as interactive
  jobs, sent under backpressure (at most 5,000 waiting, the backfill default) and sampled every second:
  ``used_memory``, the stream's memory, the queue depth. Written to ``bench-results/redis-curve-<mode>.json``;
  ``python -m tests.benchmarks.redis_plot`` draws them.
- ``reconciler``: one sweep's time and the jobs it examined with 10k and 100k open jobs queued through the real
  producer, and 1M simulated (index entries and queue entries written directly).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from producers.broker import JobQueue
from schemas.events import STREAM_FIELD
from schemas.job import ImageRef, ModerationJob, Priority
from schemas.keys import VERDICT_STREAM, job_key, open_jobs_key, queue_name
from schemas.models import get_model
from tests.benchmarks.harness import RESULTS_DIR, Figure, run_jobs, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, start_server, upload_jobs
from tests.services.procs import start_redis
from worker.publish import Publisher
from worker.reconcile import Reconciler

MAX_PENDING = 5000
RATIONALE_CHARS = 300  # LlavaGuard's run 200-400 characters; guardq's schema caps them at 399


def _state(client: redis.Redis[bytes]) -> dict[str, float]:
    """Redis memory that holds data: the dataset (values, keys) plus the key-space and expiry tables (``MEMORY
    STATS``), i.e. ``used_memory`` without client buffers (a reader's pending replies alone can be hundreds of KB),
    replication/AOF buffers and start-up overhead."""
    stats = client.memory_stats()
    db = stats.get("db.0") or {}
    held = stats["dataset.bytes"] + db.get("overhead.hashtable.main", 0) + db.get("overhead.hashtable.expires", 0)
    return {
        "used_memory": float(held),
        "stream": float(client.memory_usage(VERDICT_STREAM, samples=0) or 0),  # exact, not sampled
        "keys": float(client.dbsize()),
    }


def _cache_entry_bytes(client: redis.Redis[bytes]) -> float:
    """Average bytes per cached verdict: the day buckets' memory over their fields."""
    buckets = list(client.scan_iter(match="guardq:vcb:*", count=1000))
    fields = sum(int(client.hlen(b)) for b in buckets)
    return sum(client.memory_usage(b, samples=0) or 0 for b in buckets) / fields if fields else 0.0


def _rationale_chars(client: redis.Redis[bytes], count: int = 100) -> float:
    """Average rationale length of the latest verdict events (what a whole cache entry would carry)."""
    lengths = []
    for _, fields in client.xrevrange(VERDICT_STREAM, count=count):
        verdict = (json.loads(fields[STREAM_FIELD.encode()]).get("data") or {}).get("verdict") or {}
        lengths.append(len(verdict.get("rationale") or ""))
    return sum(lengths) / len(lengths) if lengths else 0.0


def _average_usage(client: redis.Redis[bytes], pattern: str, limit: int = 200) -> float:
    sizes = []
    for key in client.scan_iter(match=pattern, count=1000):
        if key.endswith(b":lock"):
            continue
        sizes.append(client.memory_usage(key) or 0)
        if len(sizes) >= limit:
            break
    return sum(sizes) / len(sizes) if sizes else 0.0


def _freed_by(client: redis.Redis[bytes], keys: list[bytes] | list[str]) -> float:
    """What Redis holds for these keys, allocation-exact: the data it frees when they are deleted (after its cron
    has resized the key-space tables, as it does in steady state)."""
    time.sleep(1.0)
    before = _state(client)["used_memory"]
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    deadline = time.monotonic() + 10  # a Redis with lazyfree-lazy-user-del frees big values on a background thread
    while int(client.info("memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    return before - _state(client)["used_memory"]


def retained(workdir: Path, n: int = 500, *, separate_cache: bool = False) -> list[Figure]:
    with services(workdir) as svc:
        sim = start_server(max_running=None, latency_s=0.0)
        sim.configure(rationale_chars=RATIONALE_CHARS)  # LlavaGuard-length rationales: they size a whole cache entry
        cache_redis = start_redis(workdir / "cache-redis") if separate_cache else None
        try:
            extra = {"GUARDQ_CACHE_REDIS_URL": cache_redis.url} if cache_redis is not None else {}
            env = svc.env(sim.url, **extra)
            settings = settings_from(env)
            queue = JobQueue(settings)
            client = queue.redis
            with worker(env, workdir, name="state"):
                run_jobs(queue, upload_jobs(settings, distinct_jpegs(50, seed=1)), 120)  # stream, scripts, pools
                jobs = upload_jobs(settings, distinct_jpegs(n, seed=2))
                before = _state(client)
                _, seen = run_jobs(queue, jobs, 600)
                after = _state(client)
                record = _average_usage(client, "guardq:job:*")
                cache_client = redis.Redis.from_url(cache_redis.url) if cache_redis is not None else client
                cache = _cache_entry_bytes(cache_client)
                rationale = _rationale_chars(client)
            # Measured on a quiet Redis (the worker gone): its clients' traffic moves used memory by tens of KB.
            records = _freed_by(client, [job_key(j.job_id) for j in jobs]) / n
            cached = cache  # the cache's own Redis: not this figure's (its MEMORY USAGE is in the note)
            if cache_redis is None:
                buckets = list(client.scan_iter(match="guardq:vcb:*", count=1000))
                entries = sum(int(client.hlen(b)) for b in buckets)  # this run's n and the warm-up's 50
                cached = _freed_by(client, buckets) / max(1, entries)
            queue.close()
        finally:
            sim.stop()
            if cache_redis is not None:
                cache_redis.stop()
    assert seen == n
    stream = (after["stream"] - before["stream"]) / n  # MEMORY USAGE, samples=0: every node at its allocated size
    growth = (after["used_memory"] - before["used_memory"]) / n - stream
    per_job = records if separate_cache else records + cached  # every job here cached a verdict of its own
    keys = (after["keys"] - before["keys"]) / n
    where = "cache on its own Redis (GUARDQ_CACHE_REDIS_URL)" if separate_cache else "default settings, one Redis"
    note = (
        f"n={n}, {where}; freed by deleting them: job record {records:.0f} B"
        + ("" if separate_cache else f", cached verdict {cached:.0f} B")
        + f" (rationales of {rationale:.0f} chars); MEMORY USAGE {record:.0f} / "
        f"{cache:.0f} B; {keys:.2f} keys/job; used-memory growth less the stream {growth:.0f} B/job (±150 B run "
        f"to run at this size); stream entry {stream:.0f} B (excluded)"
    )
    name = "main Redis bytes per finished job, cache elsewhere" if separate_cache else "Redis bytes retained per finished job"
    figures = [Figure("state", name, per_job, "B/job", 500, False, note)]
    if not separate_cache:
        figures.append(Figure("state", "verdict stream bytes per job (trimmed by length and age)", stream, "B/job"))
    return figures


def _bulk_jobs(settings: Any, count: int, seed: int, backfill: str | None) -> list[ModerationJob]:
    fields: dict[str, object] = {"priority": Priority.BULK, "backfill_id": backfill} if backfill else {}
    return upload_jobs(settings, distinct_jpegs(count, seed=seed), **fields)


def curve(workdir: Path, mode: str, n: int | None = None, batch: int = 250) -> list[Figure]:
    """Send ``n`` jobs under backpressure and sample Redis every second until the last one ended."""
    n = n or int(os.environ.get("GUARDQ_BENCH_STATE_JOBS", "100000"))
    backfill = f"bench-{uuid.uuid4().hex[:8]}" if mode == "backfill" else None
    with services(workdir) as svc:
        sim = start_server(max_running=None, latency_s=0.0)
        try:
            env = svc.env(sim.url)
            settings = settings_from(env)
            producer = JobQueue(settings)
            client = producer.redis
            target = queue_name(get_model(settings.model), Priority.BULK if backfill else Priority.INTERACTIVE)
            samples: list[dict[str, float]] = []
            with worker(env, workdir, name=f"curve-{mode}"):
                run_jobs(producer, upload_jobs(settings, distinct_jpegs(20, seed=1)), 120)
                base = _state(client)
                started = time.monotonic()
                sent, next_sample, seed = 0, 0.0, 10
                while True:
                    now = time.monotonic()
                    depth = producer.depth(target)
                    if now >= next_sample:
                        done = client.xlen(VERDICT_STREAM) - 20
                        samples.append({"t": round(now - started, 2), "done": done, "depth": depth, **_state(client)})
                        next_sample = now + 1.0
                        if len(samples) % 30 == 0:
                            print(f"[state] {mode}: {done:,}/{n:,} done", file=sys.stderr, flush=True)
                        if done >= n:
                            break
                    if sent < n and depth < MAX_PENDING:
                        count = min(batch, n - sent)
                        producer.send_many(_bulk_jobs(settings, count, seed, backfill))
                        sent, seed = sent + count, seed + 1
                    elif sent >= n:
                        time.sleep(0.2)
                    else:
                        time.sleep(0.05)  # backpressure: the queue holds MAX_PENDING
                wall = time.monotonic() - started
            producer.close()
        finally:
            sim.stop()
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"redis-curve-{mode}.json"
    out.write_text(json.dumps({"mode": mode, "n": n, "base": base, "samples": samples}, indent=1))
    last = samples[-1]
    grown = last["used_memory"] - base["used_memory"] - (last["stream"] - base["stream"])
    peak_depth = max(s["depth"] for s in samples)
    note = f"n={n} in {wall:.0f} s; queue depth peak {peak_depth:.0f}; stream +{(last['stream'] - base['stream']) / 1e6:.0f} MB"
    return [
        Figure("state", f"{mode}: Redis growth per job over {n:,} jobs (stream excluded)", grown / n, "B/job", note=note),
        Figure("state", f"{mode}: jobs/s through one worker, instant server", n / wall, "jobs/s", note=f"curve: {out}"),
    ]


def reconciler(workdir: Path, sizes: tuple[int, ...] = (10_000, 100_000), simulated: int = 1_000_000) -> list[Figure]:
    """One sweep with N open jobs: through the producer for ``sizes``, written directly for ``simulated``."""
    figures = []
    with services(workdir) as svc:
        env = svc.env("http://127.0.0.1:9")
        settings = settings_from(env)
        producer = JobQueue(settings)
        client = producer.redis
        publisher = Publisher(client, stream_maxlen=1000, job_ttl_s=3600)
        for size in (*sizes, simulated):
            client.flushdb()
            queue = f"guardq.bench.reconcile.{size}"
            if size == simulated:
                _simulate_open(client, queue, size)
                how = "simulated: index and queue entries written directly"
            else:
                for start in range(0, size, 1000):
                    jobs = [ModerationJob(image=ImageRef.parse(f"s3://b/{start + i}.jpg")) for i in range(1000)]
                    producer.send_many(jobs, queue=queue)
                how = "queued through the producer"
            head = client.zrange(open_jobs_key(queue), 0, 0)[0].decode()
            client.rpop(queue)
            publisher.begin(head, 1, "bench")  # the head began: a watermark like a live queue's
            sweeper = Reconciler(client, lambda *_: None, node="bench", grace_s=15.0)
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                sweeper.sweep()
                timings.append(time.perf_counter() - started)
            memory_mb = client.info("memory")["used_memory"] / 1e6
            figures.append(
                Figure(
                    "state",
                    f"reconciler sweep, {size:,} open jobs",
                    sorted(timings)[len(timings) // 2] * 1000,
                    "ms",
                    note=f"{how}; examined {sweeper.last_examined} job(s); Redis {memory_mb:,.0f} MB",
                )
            )
        producer.close()
    return figures


def _simulate_open(client: redis.Redis[bytes], queue: str, size: int) -> None:
    now = time.time()
    for start in range(0, size, 10_000):
        pipe = client.pipeline(transaction=False)
        ids = [f"sim{start + i:09d}" for i in range(min(10_000, size - start))]
        pipe.zadd(open_jobs_key(queue), {job_id: now + (start + i) * 1e-6 for i, job_id in enumerate(ids)})
        pipe.lpush(queue, *(f'{{"headers":{{"id":"{j}"}}}}' for j in ids))
        for job_id in ids[:1] if start == 0 else []:
            pipe.hset(f"guardq:job:{job_id}", mapping={"state": "queued", "queue": queue})
        pipe.sadd("guardq:jobs:queues", queue)
        pipe.execute()


def run(workdir: Path) -> list[Figure]:
    figures = retained(workdir / "retained") + retained(workdir / "retained-split", separate_cache=True)
    figures += reconciler(workdir / "reconciler")
    for mode in ("backfill", "interactive"):
        figures += curve(workdir / mode, mode)
    return figures
