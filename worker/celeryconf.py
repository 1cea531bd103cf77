"""Celery settings every guardq worker app shares (GPU workers and the webhook worker).

Delivery decisions, each deliberate:
- ``task_acks_late``: a job is acknowledged only after its outcome is recorded, so a crash redelivers it.
- ``task_reject_on_worker_lost``: a killed pool child requeues its job instead of acking it (at-least-once).
- ``worker_prefetch_multiplier = 1``: a worker reserves no more jobs than it has threads; the rest stay queued
  for other workers.
- JSON only, no result backend: events on the stream are the results; nothing piles up in Redis.
- One visibility timeout for broker and workers (``GUARDQ_VISIBILITY_TIMEOUT_S``), longer than any retry delay.
- Threads pool: the work is HTTP-bound; the GPU belongs to the inference server.
"""

from __future__ import annotations

from typing import Any

from schemas.settings import Settings
from worker import kombu_compat


def base_conf(settings: Settings, *, concurrency: int, default_queue: str) -> dict[str, Any]:
    """The shared ``app.conf`` values; also installs the kombu adjustments (worker/kombu_compat.py)."""
    kombu_compat.install()
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # After a broker reconnect Celery would cut the prefetch count and raise it back to the pool size, step by
        # step; the in-flight controller (worker.inflight_step) owns that number instead.
        "worker_enable_prefetch_count_reduction": False,
        "worker_concurrency": concurrency,
        "worker_pool": "threads",
        "broker_transport_options": settings.broker_transport_options(),
        "visibility_timeout": settings.visibility_timeout_s,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": 0,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_default_queue": default_queue,
        "task_create_missing_queues": True,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }
