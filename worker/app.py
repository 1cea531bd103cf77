"""The Celery application of a guardq GPU worker (shared delivery settings: worker/celeryconf.py).

Messages the consumer cannot turn into a task call (undecodable, refused content, unknown task, not a kombu envelope
at all) end in a failed ``invalid_job`` event instead of being dropped (``worker.malformed``). Remote control stays
on: the server watch pauses/resumes consumption with ``cancel_consumer``/``add_consumer`` and Flower inspects
workers through it (``worker.lifecycle`` starts the watch, metrics and heartbeat; it also closes the runtime at
shutdown).
"""

from __future__ import annotations

from celery import Celery

from schemas.job import Priority
from schemas.keys import model_queues, queue_name
from schemas.models import get_model
from schemas.settings import Settings, load_settings
from worker.celeryconf import base_conf


def create_app(settings: Settings) -> Celery:
    model = get_model(settings.model)
    app = Celery(
        "guardq",
        broker=settings.redis_url,
        include=["worker.tasks", "worker.lifecycle", "worker.malformed"],
        set_as_current=True,
    )
    app.conf.update(
        base_conf(
            settings, concurrency=settings.max_in_flight(), default_queue=queue_name(model, Priority.INTERACTIVE)
        )
        | {"worker_consumer": "worker.malformed:GuardqConsumer"}
    )
    app.conf.guardq_queues = model_queues(model)
    if settings.inflight_adaptive:
        from worker.inflight_step import InflightStep

        app.steps["consumer"].add(InflightStep)
    return app


app = create_app(load_settings())
