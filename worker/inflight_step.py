"""Celery wiring of the in-flight controller (``worker.inflight``): a consumer bootstep that owns the prefetch count.

It runs after Celery's ``Tasks`` step has created the consumer's QoS and before the event loop starts, so the
worker never takes more than the starting limit from Redis, not even in its first second; after a broker reconnect
the consumer builds a new QoS and the step applies the current limit to it again. A worker with a fixed
``GUARDQ_WORKER_CONCURRENCY`` (or the local backend) keeps Celery's own prefetch count and starts no controller.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import bootsteps
from celery.worker import state

from worker.inflight import ControlLoop, InflightController, PrefetchLimit
from worker.kombu_compat import wake_consumer

_controller: InflightController | None = None
_loop: ControlLoop | None = None
_lock = threading.Lock()


def inflight_limit() -> int | None:
    """The current limit of this worker process (None when in-flight is fixed)."""
    return _controller.limit if _controller is not None else None


def _backlog(client: Any, queues: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
    return int(sum(pipe.execute()))


class InflightStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: start (once) the controller and bind it to this consumer's QoS."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        global _controller, _loop  # noqa: PLW0603 - one controller per worker process
        from worker.runtime import get_runtime

        rt = get_runtime()
        settings = rt.settings
        if not settings.inflight_adaptive:
            return
        with _lock:
            if _controller is None:
                queues = [str(q) for q in c.app.amqp.queues.consume_from]
                backend = rt.backend
                _controller = InflightController(
                    start=settings.inflight_start,
                    floor=1,
                    ceiling=settings.max_in_flight(),
                    read_load=backend.load,  # type: ignore[attr-defined]
                    backlog=lambda: _backlog(rt.redis, queues),
                    holding=lambda: len(state.reserved_requests),
                    at_server=lambda: backend.requests_in_flight,  # type: ignore[attr-defined]
                    apply=lambda _limit: None,
                )
            _controller.apply = PrefetchLimit(c.qos, _controller.limit, wake=wake_consumer)
            if _loop is None:
                _loop = ControlLoop(_controller, period_s=settings.inflight_period_s).start()

    def shutdown(self, c: Any) -> None:
        global _loop  # noqa: PLW0603
        with _lock:
            if _loop is not None:
                _loop.stop()
                _loop = None
