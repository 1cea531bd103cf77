"""The Celery app of the webhook worker: its own queue, threads pool, the same delivery guarantees as the GPU
worker (acks late, reject on worker lost, prefetch 1), no countdowns at all (delays live in the due-time schedule).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis
from celery import Celery
from celery.signals import worker_shutdown

from schemas.errors import ErrorCode
from schemas.keys import WEBHOOK_QUEUE
from schemas.netpolicy import AddressPolicy
from schemas.settings import Settings, load_settings
from worker.webhooks.deliverer import Deliverer
from worker.webhooks.sender import WebhookSender


def create_app(settings: Settings) -> Celery:
    app = Celery("guardq-webhooks", broker=settings.redis_url, include=["worker.webhooks.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.webhook_concurrency,
        worker_pool="threads",
        broker_transport_options=settings.broker_transport_options(),
        visibility_timeout=settings.visibility_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue=WEBHOOK_QUEUE,
        task_create_missing_queues=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


@dataclass
class WebhookRuntime:
    """Per-process clients of the webhook worker: one Redis pool, one guarded HTTP pool."""

    settings: Settings
    redis: redis.Redis[bytes]
    sender: WebhookSender
    deliverer: Deliverer

    @classmethod
    def build(cls, settings: Settings) -> WebhookRuntime:
        client = redis.Redis.from_url(
            settings.redis_url,
            max_connections=settings.webhook_concurrency + 8,
            socket_timeout=30,
            socket_connect_timeout=5,
            health_check_interval=25,
            retry_on_timeout=True,
        )
        sender = WebhookSender(
            AddressPolicy(settings.webhook_allowed_networks, code=ErrorCode.FORBIDDEN_TARGET),
            timeout_s=settings.webhook_timeout_s,
            connect_timeout_s=settings.webhook_connect_timeout_s,
            allow_http=settings.webhook_allow_http,
            pool=settings.webhook_concurrency + 4,
        )
        return cls(settings, client, sender, Deliverer(client, sender, settings))

    def close(self) -> None:
        self.sender.close()
        self.redis.close()


_lock = threading.Lock()
_runtime: WebhookRuntime | None = None


def get_runtime() -> WebhookRuntime:
    global _runtime  # noqa: PLW0603 - one runtime per process by design
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = WebhookRuntime.build(load_settings())
    return _runtime


app = create_app(load_settings())


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _close(**_: object) -> None:
    global _runtime  # noqa: PLW0603
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
