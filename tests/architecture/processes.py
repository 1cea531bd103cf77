"""The processes guardq runs: the modules each runs and the keys each writes (checked against the owners)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.architecture.owners import KOMBU, D, P, S


@dataclass(frozen=True)
class Process:
    """A process guardq runs: the modules it runs (prefixes) and the keys it writes (through those modules)."""

    name: str
    command: str
    does: str
    runs: tuple[str, ...]
    writes: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    kombu: bool = False  # a Celery worker: kombu writes its queues and bookkeeping from this process

    def has(self, module: str) -> bool:
        def under(prefix: str) -> bool:
            return module == prefix or module.startswith(prefix + ".")

        if module == KOMBU:
            return self.kombu
        return any(under(p) for p in self.runs) and not any(under(p) for p in self.excludes)


_INTAKE = ("producers.broker", "producers.taskmessage")
_ENQUEUE = (S + "job_key", S + "open_jobs_key", S + "OPEN_QUEUES", S + "queue_name")
_POLICIES = (S + "policy_key", S + "POLICY_INDEX", S + "TENANT_POLICY_DEFAULTS")
PROCESSES = (
    Process(
        "producer CLI",
        "guardq enqueue · status · events · policy · api-keys · webhooks add|… · results register|report · fleet status",
        "creates jobs and reads their outcome; manages policies, keys, subscriptions and results locations",
        (
            "producers.cli",
            "producers.evaluation",
            "producers.fleetview",
            "producers.policy_store",
            "producers.api.auth",
            *_INTAKE,
            "worker.delivery.jobstatus",
            "worker.delivery.stream",
            "worker.delivery.webhooks.registry",
            "worker.delivery.webhooks.deliveries",
            "worker.delivery.webhooks.replay",
            "worker.delivery.results.targets",
            "worker.delivery.results.report",
            "worker.delivery.results.shardreport",
        ),
        (
            *_ENQUEUE,
            *_POLICIES,
            P + "api_key_key",
            P + "tenant_api_keys",
            D + "WEBHOOK_SUBSCRIPTIONS",
            D + "callback_secret_key",
            D + "webhook_delivery_key",
            D + "WEBHOOK_DUE",
            D + "RESULTS_TARGETS",
            S + "VERDICT_STREAM",
            D + "VERDICT_DLQ_STREAM",
            S + "FLEET_NODES",
        ),
    ),
    Process(
        "HTTP API",
        "guardq api",
        "the same for HTTP clients, per tenant; S3 event intake",
        (
            "producers.api",
            "producers.policy_store",
            *_INTAKE,
            "worker.delivery.jobstatus",
            "worker.delivery.webhooks.registry",
            "worker.delivery.webhooks.deliveries",
            "worker.delivery.webhooks.replay",
        ),
        (
            *_ENQUEUE,
            *_POLICIES,
            P + "rate_limit_key",
            P + "idempotency_key",
            P + "s3_event_key",
            D + "WEBHOOK_SUBSCRIPTIONS",
            D + "webhook_delivery_key",
            D + "WEBHOOK_DUE",
            S + "VERDICT_STREAM",
        ),
    ),
    Process(
        "backfill runner",
        "guardq backfill s3://… [--format …] [--results …] · backfill status",
        "lists a prefix or reads a dataset, enqueues with backpressure, checkpoints, tallies verdicts",
        (
            "producers.backfill",
            "producers.dataset",
            "producers.cli.dataset",
            *_INTAKE,
            "worker.delivery.results.targets",
            "worker.delivery.results.shardledger",
        ),
        (
            *_ENQUEUE,
            S + "backfill_key",
            P + "backfill_lock_key",
            P + "BACKFILL_INDEX",
            P + "BACKFILL_TALLY",
            P + "backfill_shard_tally_key",
            S + "backfill_shards_key",
            P + "DATASET_RESULTS_OWNERS",
            D + "RESULTS_TARGETS",
            D + "DATASET_RESULTS",
            D + "dataset_unwritten_key",
            S + "VERDICT_STREAM",
        ),
    ),
    Process(
        "GPU worker",
        "guardq worker (python -m worker)",
        "a Celery worker bound to one SGLang server: fetch, prepare, infer, publish; reconciles and reclaims",
        ("worker",),
        (
            *_ENQUEUE[:2],
            S + "terminal_guard_key",
            S + "RUNNING_JOBS",
            S + "QUEUE_WATERMARKS",
            S + "OPEN_QUEUES",
            S + "OPEN_JOBS",
            S + "RECONCILE_SUSPECTS",
            S + "RECONCILE_LOCK",
            S + "UNACKED",
            S + "UNACKED_OWNERS",
            S + "RECLAIM_LOCK",
            S + "RECLAIM_SUSPECTS",
            S + "worker_lease_key",
            S + "verdict_cache_key",
            S + "verdict_cache_bucket",
            S + "FLEET_NODES",
            S + "fleet_node_key",
            S + "VERDICT_STREAM",
            S + "queue_name",
        ),
        excludes=("worker.delivery", "worker.fleet"),
        kombu=True,
    ),
    Process(
        "fleet launcher",
        "guardq worker --gpus 0,1,…",
        "starts and supervises one SGLang server and one GPU worker per GPU",
        ("worker.fleet", "worker.heartbeat"),
        (S + "FLEET_NODES", S + "fleet_node_key"),
    ),
    Process(
        "webhook worker",
        "guardq webhooks worker (with python -m worker.delivery.webhooks, its Celery child)",
        "fans events out into deliveries, schedules them, signs and sends them",
        ("worker.delivery.webhooks", "worker.delivery.stream.consumer"),
        (
            S + "VERDICT_STREAM",
            D + "VERDICT_DLQ_STREAM",
            D + "webhook_delivery_key",
            D + "WEBHOOK_DUE",
            D + "WEBHOOK_DLQ_STREAM",
            D + "WEBHOOK_QUEUE",
            D + "WEBHOOK_SUBSCRIPTIONS",
            D + "callback_secret_key",
            S + "UNACKED",
        ),
        kombu=True,
    ),
    Process(
        "results sink",
        "guardq results sink",
        "writes each backfill's events to S3: JSON Lines parts, or one Parquet per dataset shard",
        ("worker.delivery.results", "worker.delivery.stream.consumer"),
        (
            S + "VERDICT_STREAM",
            D + "VERDICT_DLQ_STREAM",
            D + "RESULTS_PENDING",
            S + "job_key",
            D + "dataset_staged_key",
            D + "dataset_written_key",
            D + "dataset_unwritten_key",
            D + "dataset_manifest_key",
            D + "dataset_lock_key",
        ),
    ),
)
