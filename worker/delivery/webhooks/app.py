"""The Celery app of the webhook worker: its own queue, threads pool, the same delivery guarantees as the GPU
worker (acks late, reject on worker lost, prefetch 1), no countdowns at all (delays live in the due-time schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from celery.signals import worker_shutdown

from schemas.errors import ErrorCode
from schemas.netpolicy import AddressPolicy
from schemas.settings import Settings, load_settings
from worker.celeryconf import base_conf
from worker.delivery.keys import WEBHOOK_QUEUE
from worker.delivery.webhooks.deliverer import Deliverer
from worker.delivery.webhooks.sender import WebhookSender
from worker.singleton import PerProcess


def create_app(settings: Settings) -> Celery:
    app = Celery("guardq-webhooks", broker=settings.redis_url, include=["worker.delivery.webhooks.tasks"])
    app.conf.update(base_conf(settings, concurrency=settings.webhook_concurrency, default_queue=WEBHOOK_QUEUE))
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


_runtime: PerProcess[WebhookRuntime] = PerProcess(lambda: WebhookRuntime.build(load_settings()))
get_runtime = _runtime.get


app = create_app(load_settings())


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _close(**_: object) -> None:
    _runtime.close()
