"""Redis key layout of delivery (``worker/delivery/``): the stream consumers' dead letters, webhooks, results.

Every key here is written by one module of this package (docs/architecture.md lists which); nothing outside the
package names them: the CLI and the API reach this state through ``worker.delivery``'s public interface.
"""

from __future__ import annotations

import hashlib

from schemas.keys import KEY_PREFIX

VERDICT_DLQ_STREAM = "guardq:verdicts.dlq"  # poison entries a consumer group gave up on (`guardq events tail`)

# Webhooks (worker/delivery/webhooks/)
WEBHOOK_QUEUE = "guardq.webhooks"  # Celery queue of webhook deliveries; never consumed by GPU workers
TASK_DELIVER_WEBHOOK = "guardq.webhooks.deliver"  # one argument list: [delivery_id, lease]
WEBHOOK_DISPATCH_GROUP = "guardq.webhooks"  # consumer group on the verdict stream that fans out deliveries
WEBHOOK_DLQ_STREAM = "guardq:webhooks.dlq"  # deliveries that exhausted their schedule or were refused
WEBHOOK_SUBSCRIPTIONS = f"{KEY_PREFIX}:webhooks:subscriptions"  # hash: subscription id -> Subscription JSON
WEBHOOK_DUE = f"{KEY_PREFIX}:webhooks:due"  # sorted set: delivery id scored by the unix time it is due


def webhook_delivery_key(delivery_id: str) -> str:
    """Hash of one webhook delivery (``schemas.records.DeliveryField``): its record, the exact body, attempts,
    state and current lease."""
    return f"{KEY_PREFIX}:webhooks:delivery:{delivery_id}"


def callback_secret_key(tenant: str) -> str:
    """The ``whsec_`` secret that signs a tenant's per-job ``callback_url`` deliveries."""
    return f"{KEY_PREFIX}:webhooks:callback-secret:{tenant}"


# Backfill results (worker/delivery/results/): S3 JSON Lines parts, and dataset mode's Parquet per input shard.
RESULTS_GROUP = "guardq.results"  # consumer group of the results sink
RESULTS_TARGETS = f"{KEY_PREFIX}:results:targets"  # hash: backfill id -> s3://bucket/prefix
RESULTS_PENDING = f"{KEY_PREFIX}:results:pending"  # hash: s3:// URI of a part -> its body, written ahead of the PUT
DATASET_RESULTS = f"{KEY_PREFIX}:dataset:results"  # hash: backfill id -> JSON {uri, source prefix} (Parquet results)


def dataset_unwritten_key(backfill_id: str) -> str:
    """Set: shard keys fully sent whose results Parquet is not written yet."""
    return f"{KEY_PREFIX}:dataset:{backfill_id}:unwritten"


def dataset_written_key(backfill_id: str) -> str:
    """Hash: shard key -> JSON of its written results Parquet (object, rows, completed, failed, bytes, sha256)."""
    return f"{KEY_PREFIX}:dataset:{backfill_id}:written"


def dataset_staged_key(backfill_id: str, shard_key: str) -> str:
    """Hash: job id -> the job's results row (JSON), until its shard's Parquet is written."""
    digest = hashlib.sha256(shard_key.encode()).hexdigest()[:24]
    return f"{KEY_PREFIX}:dataset:{backfill_id}:staged:{digest}"


def dataset_manifest_key(backfill_id: str) -> str:
    """Hash: ``seq`` (shards committed), ``written_seq`` (what the manifest object shows), ``complete``."""
    return f"{KEY_PREFIX}:dataset:{backfill_id}:manifest"


def dataset_lock_key(backfill_id: str, name: str) -> str:
    """String with a TTL: one results sink at a time writes a shard's Parquet (or the manifest)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return f"{KEY_PREFIX}:dataset:{backfill_id}:lock:{digest}"
