"""Prometheus metrics of a worker process, and the hooks the task (and later features) call to update them.

The threads pool runs every job in one process, so a plain ``prometheus_client`` registry served by its own HTTP
server (``GUARDQ_METRICS_PORT``) sees everything; no multiprocess mode is needed. Metric names:

- ``guardq_jobs_total{model,outcome,code}``: finished jobs; outcome completed/failed/duplicate, code the error code
- ``guardq_stage_duration_seconds{model,stage}``: histograms of fetch, prepare, infer, publish, total and queued
- ``guardq_jobs_in_flight{model,gpu}``: jobs running now on this worker (its GPU)
- ``guardq_job_retries_total{model,code}`` / ``guardq_jobs_requeued_total{model,reason}``
- ``guardq_cache_lookups_total{cache,result}``: :meth:`WorkerMetrics.cache_lookup` for any cache (hit/miss)
- ``guardq_sglang_up{gpu}`` and ``guardq_consuming{gpu}``: the server's readiness and whether the worker takes jobs
- ``guardq_queue_depth{queue}``: messages waiting per queue (Redis list length, read at scrape time)
- ``guardq_worker_info{node,model,gpu,sglang_url}``: constant 1, for joins in dashboards

Besides Prometheus, :class:`JobStats` keeps the few numbers the fleet registry shows (in-flight, totals, jobs/s).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas.events import CloudEvent

log = structlog.get_logger("guardq.metrics")
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
THROUGHPUT_WINDOW_S = 60.0


class JobStats:
    """In-process totals and a sliding window of finish times (jobs per second over the last minute)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished: deque[float] = deque()
        self._since = time.monotonic()
        self.in_flight = 0
        self.completed = 0
        self.failed = 0
        self.duplicates = 0
        self.retries = 0
        self.requeued = 0

    def add(self, field: str, delta: int = 1) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + delta)
            if field in {"completed", "failed"}:
                now = time.monotonic()
                self._finished.append(now)
                self._trim(now)

    def _trim(self, now: float) -> None:
        while self._finished and self._finished[0] < now - THROUGHPUT_WINDOW_S:
            self._finished.popleft()

    def jobs_per_s(self) -> float:
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            window = min(THROUGHPUT_WINDOW_S, max(now - self._since, 1.0))
            return len(self._finished) / window

    def snapshot(self) -> dict[str, str]:
        rate = self.jobs_per_s()
        with self._lock:
            return {
                "in_flight": str(self.in_flight),
                "completed": str(self.completed),
                "failed": str(self.failed),
                "duplicates": str(self.duplicates),
                "retries": str(self.retries),
                "requeued": str(self.requeued),
                "jobs_per_s": f"{rate:.3f}",
            }


class QueueDepthCollector(Collector):
    """``guardq_queue_depth{queue}``: LLEN of each queue at scrape time (nothing when Redis does not answer)."""

    def __init__(self, client: redis.Redis[bytes], queues: Sequence[str]) -> None:
        self._client = client
        self._queues = list(queues)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("guardq_queue_depth", "Messages waiting in a queue", labels=["queue"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("guardq_queue_depth", "Messages waiting in a queue", labels=["queue"])
        try:
            pipe = self._client.pipeline(transaction=False)
            for queue in self._queues:
                pipe.llen(queue)
            depths = pipe.execute()
        except redis.RedisError:
            return
        for queue, depth in zip(self._queues, depths, strict=True):
            family.add_metric([queue], float(depth))
        yield family


class WorkerMetrics:
    """Every worker metric, registered in one registry (the process default unless a test passes its own)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, model: str = "", gpu: str = "") -> None:
        self.registry = registry
        self.model = model
        self.gpu = gpu
        self.stats = JobStats()
        self._extra: dict[str, Counter] = {}
        self._faults: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.jobs = Counter(
            "guardq_jobs", "Finished jobs by outcome and error code", ["model", "outcome", "code"], registry=registry
        )
        self.stage = Histogram(
            "guardq_stage_duration_seconds",
            "Duration of a pipeline stage of the attempt that ended a job",
            ["model", "stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.in_flight_gauge = Gauge(
            "guardq_jobs_in_flight", "Jobs running on this worker", ["model", "gpu"], registry=registry
        )
        self.retries = Counter(
            "guardq_job_retries", "Transient failures scheduled for a retry", ["model", "code"], registry=registry
        )
        self.requeued = Counter(
            "guardq_jobs_requeued", "Jobs handed back to the queue untouched", ["model", "reason"], registry=registry
        )
        self.cache = Counter(
            "guardq_cache_lookups",
            "Cache lookups by cache and result (hit/miss)",
            ["cache", "result"],
            registry=registry,
        )
        self.sglang_up = Gauge(
            "guardq_sglang_up", "1 while the worker's SGLang server is ready", ["gpu"], registry=registry
        )
        self.consuming = Gauge(
            "guardq_consuming", "1 while the worker takes jobs from its queues", ["gpu"], registry=registry
        )
        self.healthy = Gauge(
            "guardq_worker_healthy",
            "0 while a configuration-class fault keeps the worker from taking jobs (worker/faults.py)",
            ["gpu"],
            registry=registry,
        )
        self.fault = Gauge(
            "guardq_worker_fault", "1 for the cause of the worker's current fault", ["gpu", "cause"], registry=registry
        )
        self.reclaimed = Counter(
            "guardq_reclaimed_messages",
            "Reserved messages of dead workers handed back to their queues by this worker (worker/reclaim.py)",
            registry=registry,
        )
        self.info = Gauge(
            "guardq_worker_info",
            "Constant 1 labelled with the worker's identity",
            ["node", "model", "gpu", "sglang_url"],
            registry=registry,
        )

    # --- hooks used by the task ---------------------------------------------------------------------------------
    @contextmanager
    def running(self) -> Iterator[None]:
        """Count a job as in flight for the duration of the block."""
        gauge = self.in_flight_gauge.labels(self.model, self.gpu)
        gauge.inc()
        self.stats.add("in_flight")
        try:
            yield
        finally:
            gauge.dec()
            self.stats.add("in_flight", -1)

    def finished(self, event: CloudEvent, *, publish_s: float | None, duplicate: bool) -> None:
        """Record a terminal event: its outcome, code and the stage durations of the attempt that ended it."""
        error = event.data.error
        outcome = "duplicate" if duplicate else ("completed" if event.completed else "failed")
        self.jobs.labels(self.model, outcome, error.code.value if error else "none").inc()
        self.stats.add("duplicates" if duplicate else outcome)
        timings = event.data.timings
        stages = {
            "queued": timings.queued_ms,
            "fetch": timings.fetch_ms,
            "prepare": timings.prepare_ms,
            "infer": timings.infer_ms,
            "total": timings.total_ms,
        }
        for stage, ms in stages.items():
            if ms is not None:
                self.stage.labels(self.model, stage).observe(ms / 1000.0)
        if publish_s is not None:
            self.stage.labels(self.model, "publish").observe(publish_s)

    def duplicate_delivery(self) -> None:
        """A delivery of a job that had already ended (nothing published)."""
        self.jobs.labels(self.model, "duplicate", "none").inc()
        self.stats.add("duplicates")

    def retry(self, code: str) -> None:
        self.retries.labels(self.model, code).inc()
        self.stats.add("retries")

    def requeue(self, reason: str) -> None:
        self.requeued.labels(self.model, reason).inc()
        self.stats.add("requeued")

    def cache_lookup(self, cache: str, *, hit: bool) -> None:
        """Hook for any cache (verdict cache, image cache...): one call per lookup."""
        self.cache.labels(cache, "hit" if hit else "miss").inc()

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """A further counter registered once in this registry (``guardq_`` is prefixed when missing)."""
        full = name if name.startswith("guardq_") else f"guardq_{name}"
        with self._lock:
            if full not in self._extra:
                self._extra[full] = Counter(full, documentation, list(labelnames), registry=self.registry)
            return self._extra[full]

    # --- state gauges ---------------------------------------------------------------------------------------------
    def set_server(self, *, up: bool, consuming: bool) -> None:
        self.sglang_up.labels(self.gpu).set(1 if up else 0)
        self.consuming.labels(self.gpu).set(1 if consuming else 0)

    def set_fault(self, cause: str | None) -> None:
        """The worker's configuration-class fault (None: healthy)."""
        self.healthy.labels(self.gpu).set(0 if cause else 1)
        with self._lock:
            for labels in list(self._faults):
                self.fault.labels(*labels).set(0)
            if cause:
                self._faults.add((self.gpu, cause))
                self.fault.labels(self.gpu, cause).set(1)

    def describe_worker(self, node: str, sglang_url: str) -> None:
        self.info.labels(node, self.model, self.gpu, sglang_url).set(1)


_lock = threading.Lock()
_metrics: WorkerMetrics | None = None


def configure(*, model: str, gpu: str) -> WorkerMetrics:
    """Label this process's metrics with its model and GPU (first call wins; later calls return the same)."""
    global _metrics  # noqa: PLW0603 - one set of metrics per process, like the runtime
    with _lock:
        if _metrics is None:
            _metrics = WorkerMetrics(model=model, gpu=gpu)
        return _metrics


def get_metrics() -> WorkerMetrics:
    """The process's metrics, created with the runtime's model and GPU on first use."""
    if _metrics is None:
        from worker.runtime import get_runtime

        rt = get_runtime()
        return configure(model=rt.model.slug, gpu=rt.settings.gpu or "")
    return _metrics


def serve(port: int, host: str, registry: CollectorRegistry = REGISTRY) -> Any | None:
    """Serve ``/metrics`` on ``host:port``; a busy port is logged, not fatal (jobs matter more than metrics)."""
    if port == 0:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("metrics_unavailable", port=port, host=host, error=str(exc))
        return None
    log.info("metrics_serving", url=f"http://{host}:{port}/metrics")
    return server
