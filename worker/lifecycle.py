"""What a worker process runs beside Celery's consumer: lease, metrics endpoint, server watch, heartbeat,
reconciler, reclaimer.

The lease and the reservation owner (``worker.liveness``, ``worker.kombu_compat``) start on ``celeryd_init``,
before the consumer reserves anything; the rest on ``worker_ready`` (the consumer is up and knows its node name and
queues). Told to wind down on ``worker_shutting_down`` (no Redis I/O in a signal handler: it only flips flags),
stopped on ``worker_shutdown``.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import structlog
from celery.signals import celeryd_init, worker_ready, worker_shutdown, worker_shutting_down
from prometheus_client import REGISTRY

from schemas.keys import TASK_MODERATE
from worker import kombu_compat, metrics
from worker.faults import FaultState, configure_faults
from worker.heartbeat import Heartbeat
from worker.inflight_step import inflight_limit
from worker.liveness import Lease, new_incarnation, set_current_incarnation
from worker.reclaim import OwnReservations, Reclaimer, ReclaimLoop
from worker.reconcile import ReconcileLoop, Reconciler
from worker.runtime import close_runtime, get_runtime
from worker.serverwatch import RemoteConsumerSwitch, ServerWatch
from worker.streamwatch import RedisStateCollector, warn_lagging

log = structlog.get_logger("guardq.lifecycle")


@dataclass
class Services:
    node: str
    queues: list[str]
    started_at: float
    metrics_url: str
    watch: ServerWatch | None = None
    heartbeat: Heartbeat | None = None
    reconcile: ReconcileLoop | None = None
    reclaim: ReclaimLoop | None = None
    draining: bool = False


_services: Services | None = None
_lease: Lease | None = None


def server_is_down(wait_s: float = 0.0) -> bool:
    """True when this worker's server is known to be down (after waiting up to ``wait_s`` for it to return)."""
    services = _services
    if services is None or services.watch is None:
        return False
    return not services.watch.wait_up(wait_s) if wait_s > 0 else not services.watch.up


def server_unreachable() -> None:
    """A job could not reach the server: probe now instead of at the next interval."""
    if _services is not None and _services.watch is not None:
        _services.watch.poke()


def _snapshot() -> dict[str, object]:
    rt = get_runtime()
    services = _services
    assert services is not None
    watch = services.watch
    up = watch.up if watch is not None else True
    consuming = watch.consuming if watch is not None else True
    state = "draining" if services.draining else ("running" if consuming else "paused")
    fault = configure_faults(pause_s=rt.settings.fault_pause_s, pause_max_s=rt.settings.fault_pause_max_s).state
    return {
        "incarnation": _lease.incarnation if _lease is not None else "",
        "worker_health": "unhealthy" if fault is not None else "ok",
        "fault": fault.cause if fault is not None else "",
        "fault_message": fault.message[:300] if fault is not None else "",
        "role": "worker",
        "state": state,
        "node": services.node,
        "model": rt.model.name,
        "gpu": rt.settings.gpu or "",
        "sglang_url": rt.settings.sglang_url if rt.settings.backend == "sglang" else rt.settings.backend,
        "server": "up" if up else "down",
        "consuming": int(consuming),
        "queues": ",".join(services.queues),
        "concurrency": inflight_limit() or rt.settings.max_in_flight(),
        "pid": os.getpid(),
        "started_at": f"{services.started_at:.3f}",
        "metrics_url": services.metrics_url,
        **metrics.get_metrics().stats.snapshot(),
    }


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _identify(sender: Any = None, **_: object) -> None:
    """Before the consumer starts: this run's incarnation, its lease, and reservations recorded under its name."""
    global _lease  # noqa: PLW0603 - one lease per worker process
    rt = get_runtime()
    incarnation = new_incarnation(str(sender))
    set_current_incarnation(incarnation)
    _lease = Lease(rt.redis, incarnation, interval_s=rt.settings.heartbeat_interval_s).start()
    kombu_compat.record_reservations_as(incarnation)
    log.info("worker_incarnation", incarnation=incarnation)


def _on_fault(m: metrics.WorkerMetrics) -> Any:
    def changed(state: FaultState | None) -> None:
        m.set_fault(state.cause if state is not None else None)
        services = _services
        if services is not None:
            if services.watch is not None:
                services.watch.poke()
            if services.heartbeat is not None:
                services.heartbeat.beat()

    return changed


def _start_reclaim(app: Any, settings: Any, m: metrics.WorkerMetrics) -> ReclaimLoop | None:
    if settings.reclaim_interval_s <= 0 or _lease is None:
        return None

    def restore(tags: Any) -> None:
        rt = get_runtime()
        job_ids = kombu_compat.reserved_job_ids(rt.redis, list(tags))
        kombu_compat.restore_by_tags(app, list(tags))
        for job_id in job_ids:  # back in their queue: the reconciler's index says so too
            rt.publisher.requeued(job_id)
        m.reclaimed.inc(len(tags))

    client = get_runtime().redis
    reclaimer = Reclaimer(client, restore, incarnation=_lease.incarnation, grace_s=2 * settings.heartbeat_interval_s)
    own = OwnReservations(client, restore, incarnation=_lease.incarnation, held=kombu_compat.held_delivery_tags)
    return ReclaimLoop(reclaimer, interval_s=settings.reclaim_interval_s, own=own).start()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start(sender: Any, **_: object) -> None:
    global _services  # noqa: PLW0603 - one set of services per worker process
    rt = get_runtime()
    settings = rt.settings
    node = str(sender.hostname)
    queues = [str(name) for name in sender.app.amqp.queues.consume_from]
    m = metrics.configure(model=rt.model.slug, gpu=settings.gpu or "")
    sglang_url = settings.sglang_url if settings.backend == "sglang" else settings.backend
    m.describe_worker(node, sglang_url)
    m.set_server(up=True, consuming=True)
    m.set_fault(None)
    faults = configure_faults(pause_s=settings.fault_pause_s, pause_max_s=settings.fault_pause_max_s)
    faults.listen(_on_fault(m))
    REGISTRY.register(metrics.QueueDepthCollector(rt.redis, queues))
    REGISTRY.register(RedisStateCollector(rt.redis))
    served = metrics.serve(settings.metrics_port, settings.metrics_host)
    advertised = socket.gethostname() if settings.metrics_host in {"0.0.0.0", "::"} else settings.metrics_host  # noqa: S104
    services = Services(
        node=node,
        queues=queues,
        started_at=time.time(),
        metrics_url=f"http://{advertised}:{settings.metrics_port}/metrics" if served is not None else "",
    )
    # The switch pauses consumption while the server is down (SGLang backend) or a worker fault holds (any backend).
    services.watch = ServerWatch(
        rt.backend.ready if settings.backend == "sglang" else lambda: True,
        RemoteConsumerSwitch(sender.app, node, queues),
        interval_s=settings.server_watch_interval_s,
        on_change=lambda up, consuming: m.set_server(up=up, consuming=consuming),
        hold=faults.holding,
    )
    _services = services
    if services.watch is not None:
        services.watch.start()
    services.heartbeat = Heartbeat(rt.redis, node, _snapshot, interval_s=settings.heartbeat_interval_s).start()
    if settings.reconcile_interval_s > 0:
        app = sender.app

        def resend(message: dict[str, Any], queue: str, job_id: str) -> None:
            app.send_task(TASK_MODERATE, args=[message], queue=queue, task_id=job_id)

        reconciler = Reconciler(
            rt.redis,
            resend,
            node=node,
            grace_s=settings.reconcile_interval_s,
            batch=settings.reconcile_batch,
            also=lambda: warn_lagging(rt.redis, max_age_s=settings.stream_max_age_s),
        )
        services.reconcile = ReconcileLoop(reconciler, interval_s=settings.reconcile_interval_s).start()
    services.reclaim = _start_reclaim(sender.app, settings, m)
    log.info("worker_services_started", node=node, queues=queues, metrics=services.metrics_url or None)


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _draining(**_: object) -> None:
    """Warm shutdown began: report draining and stop switching consumers (flags only, we are in a signal handler)."""
    if _services is not None:
        _services.draining = True
        if _services.watch is not None:
            _services.watch.halt()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop(**_: object) -> None:
    """In-flight jobs are done: leave a last registry word, then close the runtime's clients."""
    services = _services
    if services is not None:
        if services.watch is not None:
            services.watch.stop()
        if services.heartbeat is not None:
            services.heartbeat.stop()
        if services.reconcile is not None:
            services.reconcile.stop()
        if services.reclaim is not None:
            services.reclaim.stop()
    if _lease is not None:
        _lease.stop()
    close_runtime()
