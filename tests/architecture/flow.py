"""The flow of one job, step by step: which process (through which module) writes or reads which key."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.architecture.owners import KOMBU, D, S


@dataclass(frozen=True)
class Step:
    """One step of a job's way: ``module`` (run by ``process``) writes (or reads) ``key``."""

    process: str
    module: str
    key: str
    action: str
    writes: bool = True
    extra: tuple[str, ...] = field(default_factory=tuple)  # further keys the same step writes


FLOW = (
    Step(
        "producer CLI",
        "producers.broker",
        S + "job_key",
        "record + open index + Celery message, one MULTI",
        extra=(S + "open_jobs_key", S + "queue_name"),
    ),
    Step("GPU worker", KOMBU, S + "queue_name", "BRPOP, reserve", writes=False, extra=(S + "UNACKED",)),
    Step("GPU worker", "worker.kombu_compat", S + "UNACKED_OWNERS", "name the reserving incarnation"),
    Step("GPU worker", "worker.publish", S + "job_key", "begin the attempt", extra=(S + "RUNNING_JOBS",)),
    Step("GPU worker", "worker.cache", S + "verdict_cache_bucket", "cached verdict, else infer and store"),
    Step(
        "GPU worker",
        "worker.publish",
        S + "VERDICT_STREAM",
        "XADD the terminal event, compact the record",
        extra=(S + "job_key",),
    ),
    Step(
        "webhook worker",
        "worker.delivery.stream.consumer",
        S + "VERDICT_STREAM",
        "the dispatcher reads it as group guardq.webhooks",
        writes=False,
    ),
    Step(
        "webhook worker",
        "worker.delivery.webhooks.deliveries",
        D + "webhook_delivery_key",
        "one delivery per target",
        extra=(D + "WEBHOOK_DUE",),
    ),
    Step("webhook worker", "worker.delivery.webhooks.scheduler", D + "WEBHOOK_QUEUE", "due deliveries, leased"),
    Step(
        "webhook worker",
        "worker.delivery.webhooks.deliveries",
        D + "webhook_delivery_key",
        "signed POST, then settle: delivered, retry or dead letter",
        extra=(D + "WEBHOOK_DLQ_STREAM",),
    ),
    Step(
        "results sink",
        "worker.delivery.stream.consumer",
        S + "VERDICT_STREAM",
        "the sink reads it as group guardq.results",
        writes=False,
    ),
    Step(
        "results sink",
        "worker.delivery.results.sink",
        D + "RESULTS_PENDING",
        "claim, write ahead, PUT to S3",
        extra=(S + "job_key",),
    ),
    Step(
        "producer CLI",
        "worker.delivery.jobstatus",
        S + "job_key",
        "guardq status: record + event by stream id",
        writes=False,
    ),
)
