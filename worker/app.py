"""The Celery application of a guardq worker.

Delivery decisions, each deliberate:
- ``task_acks_late``: a job is acknowledged only after its terminal event is published, so a crash redelivers it.
- ``task_reject_on_worker_lost``: a killed pool child requeues its job instead of acking it (at-least-once).
- ``worker_prefetch_multiplier = 1``: a worker reserves no more jobs than it has threads; the rest stay queued
  for other GPUs.
- JSON only, no result backend: events on the stream are the results; nothing piles up in Redis.
- One visibility timeout for broker and workers (``GUARDQ_VISIBILITY_TIMEOUT_S``), longer than any retry delay.
- Messages the consumer cannot turn into a task call (undecodable, refused content, unknown task, not a kombu
  envelope at all) end in a failed ``invalid_job`` event instead of being dropped (``worker.malformed``).
- Remote control stays on: the server watch pauses/resumes consumption with ``cancel_consumer``/``add_consumer``
  and Flower inspects workers through it (``worker.lifecycle`` starts the watch, metrics and heartbeat; it also
  closes the runtime at shutdown).
"""

from __future__ import annotations

from celery import Celery

from schemas.job import Priority
from schemas.keys import model_queues, queue_name
from schemas.models import get_model
from schemas.settings import Settings, load_settings
from worker import kombu_compat


def create_app(settings: Settings) -> Celery:
    kombu_compat.install()
    model = get_model(settings.model)
    app = Celery(
        "guardq",
        broker=settings.redis_url,
        include=["worker.tasks", "worker.lifecycle", "worker.malformed"],
        set_as_current=True,
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_pool="threads",
        broker_transport_options=settings.broker_transport_options(),
        visibility_timeout=settings.visibility_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=0,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue=queue_name(model, Priority.INTERACTIVE),
        task_create_missing_queues=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_consumer="worker.malformed:GuardqConsumer",
    )
    app.conf.guardq_queues = model_queues(model)
    return app


app = create_app(load_settings())
