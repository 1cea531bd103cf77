"""The delivery loops of ``guardq webhooks worker``: the dispatcher (stream -> deliveries) and the scheduler
(due deliveries -> ``guardq.webhooks`` Celery tasks), each in its own thread, stopped together.

Both are safe to run in several processes at once: the dispatcher is a consumer group, the scheduler claims
with an atomic lease.
"""

from __future__ import annotations

import socket
import threading

import redis
import structlog
from celery import Celery

from schemas.settings import Settings
from worker.delivery.webhooks.deliveries import DeliveryStore
from worker.delivery.webhooks.dispatcher import Dispatcher
from worker.delivery.webhooks.registry import SubscriptionRegistry
from worker.delivery.webhooks.scheduler import Scheduler

log = structlog.get_logger("guardq.webhooks")


class DeliveryLoops:
    """Owns the dispatcher and scheduler threads of one process.

    ``client`` and ``celery`` are the caller's (``guardq webhooks worker`` passes its producer clients): this class
    uses them from its threads and leaves closing them to the caller.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis[bytes],
        celery: Celery,
        name: str | None = None,
        dispatch: bool = True,
    ) -> None:
        self.settings = settings
        self.store = DeliveryStore(client, settings)
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self.scheduler = Scheduler(self.store, celery, high_water=settings.webhook_concurrency * 4)
        self.dispatcher = (
            Dispatcher(
                client,
                SubscriptionRegistry(client, settings),
                self.store,
                consumer=f"dispatch-{name or socket.gethostname()}",
                on_created=lambda _: self._wake.set(),
            )
            if dispatch
            else None
        )
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.start()
            self._threads.append(threading.Thread(target=self._dispatch_loop, name="webhook-dispatch", daemon=True))
        self._threads.append(threading.Thread(target=self._schedule_loop, name="webhook-schedule", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("webhook_loops_started", dispatch=self.dispatcher is not None)

    def stop(self, timeout_s: float = 10) -> None:
        self.stop_event.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def _dispatch_loop(self) -> None:
        assert self.dispatcher is not None
        while not self.stop_event.is_set():
            try:
                self.dispatcher.step()
            except redis.RedisError as exc:
                log.error("dispatch_redis_error", error=repr(exc))
                self.stop_event.wait(1.0)

    def _schedule_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                sent = self.scheduler.tick()
            except redis.RedisError as exc:
                log.error("schedule_redis_error", error=repr(exc))
                sent = 0
                self.stop_event.wait(1.0)
            if sent == 0:  # nothing due (or the queue is full): sleep until woken or the poll interval passes
                self._wake.wait(self.settings.webhook_poll_s)
                self._wake.clear()
