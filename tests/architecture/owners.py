"""Who owns each Redis key: every name of the key modules, with the module that writes it, its co-writers (each for a
stated part) and its readers. docs/architecture.md's key tables are rendered from this; test_architecture.py checks
it against the imports of every module."""

from __future__ import annotations

from dataclasses import dataclass

KOMBU = "kombu"  # kombu's Redis transport (Celery's broker): writes the queues and its own bookkeeping
S, P, D = "schemas.keys.", "producers.rediskeys.", "worker.delivery.keys."  # the three key modules


@dataclass(frozen=True)
class Key:
    """One name of a key module. ``kind``: key (a Redis key, or a family of them), queue (a Celery queue: a Redis
    list), group (a consumer group on the verdict stream), or name (not a key: a prefix, a field, a task name)."""

    kind: str
    owner: str = ""  # the module that writes it (KOMBU for kombu's own)
    also: tuple[str, ...] = ()  # other writers, each for a stated part (shown in the doc)
    readers: tuple[str, ...] = ()
    note: str = ""  # what the co-writers do, or what a name is
    shape: str = ""  # the name, where the code cannot show it (computed names)


KEYS: dict[str, Key] = {
    # --- schemas.keys: names more than one package uses ----------------------------------------------------------
    S + "TASK_MODERATE": Key("name", note="Celery task name"),
    S + "KEY_PREFIX": Key("name", note="prefix of every guardq key"),
    S + "model_queues": Key("name", note="a model's queues in consumption order"),
    S + "OPEN_JOBS_PREFIX": Key("name", note="prefix of open_jobs_key"),
    S + "VERDICT_CACHE_PREFIX": Key("name", note="prefix of verdict_cache_key"),
    S + "VERDICT_CACHE_SHARDS": Key("name", note="day buckets per day"),
    S + "POLICY_LATEST_FIELD": Key("name", note="field of policy_key"),
    S + "POLICY_DELETED_FIELD": Key("name", note="field of policy_key"),
    S + "policy_meta_field": Key("name", note="field of policy_key"),
    S + "VERDICT_STREAM": Key(
        "key",
        "worker.publish",
        also=(
            "worker.delivery.stream.consumer",
            "worker.delivery.webhooks.registry",
            "worker.delivery.results.targets",
        ),
        readers=(
            "worker.delivery.stream.reader",
            "worker.delivery.jobstatus",
            "worker.delivery.webhooks.replay",
            "producers.backfill.tally",
            "worker.streamwatch",
            "worker.cache",  # a compacted cache entry's rationale is read from its job's event
        ),
        note="only the publish step adds entries; the delivery package creates and acks its consumer groups",
    ),
    S + "queue_name": Key(
        "queue",
        "producers.broker",
        also=("worker.reconcile", KOMBU),
        readers=("producers.cli.backfill", "worker.app"),
        note="the reconciler re-sends lost messages; kombu takes and restores them",
        shape="guardq.<model>[.bulk]",
    ),
    S + "job_key": Key(
        "key",
        "worker.publish",
        also=("producers.broker", "worker.reconcile", "worker.delivery.results.sink"),
        readers=("worker.delivery.jobstatus", "worker.delivery.webhooks.dispatcher"),
        note="created by the producer; `reconciled` by the reconciler; `results_part` by the results sink",
    ),
    S + "terminal_guard_key": Key("key", "worker.publish", readers=("producers.broker", "worker.reconcile")),
    S + "open_jobs_key": Key(
        "key",
        "producers.broker",
        also=("worker.publish", "worker.reconcile"),
        note="the publish step takes a job out when it begins (and back on a retry); the reconciler re-enters it",
    ),
    S + "RUNNING_JOBS": Key("key", "worker.publish", also=("worker.reconcile",)),
    S + "QUEUE_WATERMARKS": Key("key", "worker.publish", readers=("worker.reconcile",)),
    S + "OPEN_QUEUES": Key("key", "producers.broker", also=("worker.reconcile",)),
    S + "OPEN_JOBS": Key("key", "worker.reconcile", also=("worker.publish",), note="legacy index being drained"),
    S + "RECONCILE_SUSPECTS": Key("key", "worker.reconcile"),
    S + "RECONCILE_LOCK": Key("key", "worker.reconcile"),
    S + "UNACKED": Key("key", KOMBU, readers=("worker.kombu_compat", "producers.fleetview")),
    S + "UNACKED_OWNERS": Key(
        "key", "worker.kombu_compat", also=("worker.reclaim",), note="the reclaimer drops stale entries"
    ),
    S + "RECLAIM_LOCK": Key("key", "worker.reclaim"),
    S + "RECLAIM_SUSPECTS": Key("key", "worker.reclaim"),
    S + "worker_lease_key": Key("key", "worker.liveness"),
    S + "backfill_key": Key(
        "key",
        "producers.backfill.checkpoint",
        also=("producers.backfill.tally",),
        readers=("worker.delivery.results.shardledger",),
        note="the tally adds `completed`/`failed`",
    ),
    S + "backfill_shards_key": Key(
        "key", "producers.dataset.runner", readers=("producers.dataset.status", "worker.delivery.results.shardledger")
    ),
    S + "policy_key": Key("key", "producers.policy_store", readers=("worker.policies",)),
    S + "POLICY_INDEX": Key("key", "producers.policy_store"),
    S + "TENANT_POLICY_DEFAULTS": Key("key", "producers.policy_store", readers=("worker.policies",)),
    S + "verdict_cache_key": Key(
        "key",
        "worker.cache",
        shape="guardq:vc:<digest>:lock",
        note="the in-flight lock; the digest is the verdict's field in its day bucket",
    ),
    S + "verdict_cache_bucket": Key("key", "worker.cache"),
    S + "FLEET_NODES": Key(
        "key", "worker.heartbeat", also=("producers.fleetview",), note="the fleet view forgets nodes silent for 1 h"
    ),
    S + "fleet_node_key": Key("key", "worker.heartbeat", readers=("producers.fleetview",)),
    # --- producers.rediskeys: intake's own state -----------------------------------------------------------------
    P + "backfill_lock_key": Key("key", "producers.backfill.checkpoint", readers=("producers.backfill.status",)),
    P + "BACKFILL_INDEX": Key("key", "producers.backfill.checkpoint", readers=("producers.backfill.tally",)),
    P + "BACKFILL_TALLY": Key(
        "key",
        "producers.backfill.tally",
        also=("producers.backfill.checkpoint",),
        note="the first backfill sets the cursor",
    ),
    P + "backfill_shard_tally_key": Key("key", "producers.backfill.tally", readers=("producers.dataset.status",)),
    P + "api_key_key": Key("key", "producers.api.auth"),
    P + "tenant_api_keys": Key("key", "producers.api.auth"),
    P + "rate_limit_key": Key("key", "producers.api.ratelimit"),
    P + "idempotency_key": Key("key", "producers.api.idempotency", shape="guardq:idem:<tenant>:<sha256 of the key>"),
    P + "s3_event_key": Key(
        "key", "producers.api.intake", shape="guardq:s3evt:<sha256 of tenant, bucket, key, sequencer>"
    ),
    P + "DATASET_RESULTS_OWNERS": Key("key", "producers.cli.dataset"),
    # --- worker.delivery.keys: delivery, one writer per key ------------------------------------------------------
    D + "TASK_DELIVER_WEBHOOK": Key("name", note="Celery task name"),
    D + "VERDICT_DLQ_STREAM": Key("key", "worker.delivery.stream.consumer"),
    D + "WEBHOOK_DISPATCH_GROUP": Key(
        "group",
        "worker.delivery.webhooks.dispatcher",
        readers=("worker.delivery.webhooks.registry",),
        note="created by the first subscription too",
    ),
    D + "RESULTS_GROUP": Key(
        "group",
        "worker.delivery.results.sink",
        readers=("worker.delivery.results.targets",),
        note="created when a backfill registers results too",
    ),
    D + "WEBHOOK_QUEUE": Key("queue", "worker.delivery.webhooks.scheduler", readers=("worker.delivery.webhooks.app",)),
    D + "WEBHOOK_SUBSCRIPTIONS": Key("key", "worker.delivery.webhooks.registry"),
    D + "callback_secret_key": Key("key", "worker.delivery.webhooks.registry"),
    D + "webhook_delivery_key": Key("key", "worker.delivery.webhooks.deliveries"),
    D + "WEBHOOK_DUE": Key("key", "worker.delivery.webhooks.deliveries"),
    D + "WEBHOOK_DLQ_STREAM": Key("key", "worker.delivery.webhooks.deliveries"),
    D + "RESULTS_TARGETS": Key("key", "worker.delivery.results.targets", readers=("worker.delivery.jobstatus",)),
    D + "RESULTS_PENDING": Key("key", "worker.delivery.results.sink"),
    D + "DATASET_RESULTS": Key("key", "worker.delivery.results.shardledger"),
    D + "dataset_unwritten_key": Key("key", "worker.delivery.results.shardledger"),
    D + "dataset_written_key": Key("key", "worker.delivery.results.shardledger"),
    D + "dataset_staged_key": Key("key", "worker.delivery.results.shardledger"),
    D + "dataset_manifest_key": Key("key", "worker.delivery.results.shardledger"),
    D + "dataset_lock_key": Key("key", "worker.delivery.results.shardledger"),
}
