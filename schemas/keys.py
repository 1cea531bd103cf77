"""Names shared by producers and workers: the task, queues, the verdict stream and Redis key layout."""

from __future__ import annotations

import base64
import hashlib

from schemas.job import Priority
from schemas.models import ModelSpec

TASK_MODERATE = "guardq.moderate"
VERDICT_STREAM = "guardq:verdicts"
KEY_PREFIX = "guardq"


def queue_name(model: ModelSpec, priority: Priority = Priority.INTERACTIVE) -> str:
    """Celery queue of a model; bulk work (backfills) has its own queue that workers drain last."""
    base = f"guardq.{model.slug}"
    return base if priority is Priority.INTERACTIVE else f"{base}.bulk"


def model_queues(model: ModelSpec) -> list[str]:
    """A model's queues in consumption order: interactive first, then bulk."""
    return [queue_name(model, Priority.INTERACTIVE), queue_name(model, Priority.BULK)]


# Where each unfinished job is, for the reconciler (worker/reconcile.py); times are Redis server time.
OPEN_JOBS_PREFIX = f"{KEY_PREFIX}:jobs:open:"  # + queue: sorted set, job id -> when its message joined that queue
RUNNING_JOBS = f"{KEY_PREFIX}:jobs:running"  # sorted set: job id -> when a worker began it
QUEUE_WATERMARKS = f"{KEY_PREFIX}:jobs:watermarks"  # hash: queue -> latest open-index score of a job begun from it
OPEN_QUEUES = f"{KEY_PREFIX}:jobs:queues"  # set: queues that have an open index
OPEN_JOBS = f"{KEY_PREFIX}:jobs:open"  # legacy single index (before per-queue ones): drained by the reconciler
RECONCILE_SUSPECTS = f"{KEY_PREFIX}:reconcile:suspects"  # hash: job id -> when a sweep first missed its message
RECONCILE_LOCK = f"{KEY_PREFIX}:reconcile:lock"
# Messages reserved by a worker that died come back from these within seconds, not after the visibility timeout
# (worker/reclaim.py). Written by the worker's kombu reservation hook (worker/kombu_compat.py) and its lease.
UNACKED_OWNERS = f"{KEY_PREFIX}:unacked:owners"  # hash: kombu delivery tag -> incarnation of the reserving worker
UNACKED = "unacked"  # kombu's hash of reserved messages (its default ``unacked_key``; kombu_compat checks it)
RECLAIM_LOCK = f"{KEY_PREFIX}:reclaim:lock"  # one worker sweeps at a time
RECLAIM_SUSPECTS = f"{KEY_PREFIX}:reclaim:suspects"  # hash: incarnation -> Redis time its lease was first missed


def worker_lease_key(incarnation: str) -> str:
    """String with a TTL, refreshed by one worker process (one *incarnation* of a node) while it lives."""
    return f"{KEY_PREFIX}:fleet:lease:{incarnation}"


def open_jobs_key(queue: str) -> str:
    """Jobs whose message waits in ``queue`` (or was taken from it and not yet begun)."""
    return f"{OPEN_JOBS_PREFIX}{queue}"


def job_key(job_id: str) -> str:
    """Hash holding a job's state (queued/running/retrying/completed/failed).

    Its fields are ``schemas.records.JobField``. While open: tenant, image, queue, message, attempts... Once
    finished it is compacted to what status and dedupe need (``schemas.records.JOB_FINISHED_FIELDS``): the terminal
    event itself lives in the verdict stream (``stream_id``) and the sinks. ``state`` completed/failed is also the
    publish guard: a job with it never gets a second event.
    """
    return f"{KEY_PREFIX}:job:{job_id}"


def terminal_guard_key(job_id: str) -> str:
    """Legacy/fallback guard (a string): set only when a job's hash cannot hold the guard (e.g. ``WRONGTYPE``);
    checked beside the hash's ``state``."""
    return f"{KEY_PREFIX}:job:{job_id}:terminal"


def backfill_key(backfill_id: str) -> str:
    """Hash: a backfill's options, checkpoint (last key / manifest position), counters and state
    (``schemas.backfill.BackfillRecord``; written by ``producers/backfill``, read by the results sink too)."""
    return f"{KEY_PREFIX}:backfill:{backfill_id}"


def backfill_shards_key(backfill_id: str) -> str:
    """Hash: shard key -> JSON summary (rows, jobs, skipped, problems), written with the shard's last batch
    (dataset mode, ``producers/dataset/runner.py``); the results sink reads a shard's ``jobs``."""
    return f"{KEY_PREFIX}:backfill:{backfill_id}:shards"


def policy_key(name: str) -> str:
    """Hash of a stored policy: field ``<version>`` holds that version's Policy JSON, ``latest`` the newest.

    Also ``meta:<version>`` (creation facts) and, once the name is deleted, ``deleted`` (a tombstone).
    """
    return f"{KEY_PREFIX}:policy:{name}"


# Fields of a stored policy's hash besides the ``<version>`` ones (see ``producers/policy_store.py``).
POLICY_LATEST_FIELD = "latest"
POLICY_DELETED_FIELD = "deleted"  # tombstone: the name no longer resolves to its latest; ``name@N`` still does
POLICY_INDEX = f"{KEY_PREFIX}:policies"  # set of stored policy names
TENANT_POLICY_DEFAULTS = f"{KEY_PREFIX}:policy-defaults"  # hash: tenant -> policy ref (``name`` or ``name@N``)


def policy_meta_field(version: int | str) -> str:
    """Field of a stored policy's hash holding that version's bookkeeping (creation time) as JSON."""
    return f"meta:{version}"


# The verdict cache (worker/cache.py); the delivery keys (webhooks, results) are in worker/delivery/keys.py.
def verdict_cache_key(model_slug: str, policy_sha256: str, image_sha256: str, variant: str) -> str:
    """The name of the cached verdict for these image bytes under this policy text, model and request variant.

    The four parts are hashed into 128 bits (22 url-safe base64 characters after ``guardq:vc:``). The verdict is
    the field of that digest in a day bucket (:func:`verdict_cache_bucket`); ``<name>:lock`` is its in-flight lock.
    """
    digest = hashlib.sha256(f"{model_slug}\n{policy_sha256}\n{image_sha256}\n{variant}".encode()).digest()[:16]
    return f"{VERDICT_CACHE_PREFIX}{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


VERDICT_CACHE_PREFIX = f"{KEY_PREFIX}:vc:"
VERDICT_CACHE_SHARDS = 16


def verdict_cache_bucket(day: int, shard: int) -> str:
    """Hash of the verdicts cached on one UTC day (``unix time // 86400``), one of ``VERDICT_CACHE_SHARDS``: a
    field per verdict instead of a key per verdict (no per-key overhead), expiring as a whole."""
    return f"{KEY_PREFIX}:vcb:{day}:{shard:x}"


FLEET_NODES = f"{KEY_PREFIX}:fleet:nodes"


def fleet_node_key(node: str) -> str:
    """Hash describing one worker node (``gpu0@host``): its server, model, GPU, in-flight and throughput.

    Written by the worker's heartbeat and by the launcher that supervises it, read by ``guardq fleet status``;
    it expires when neither refreshes it. ``FLEET_NODES`` (a sorted set scored by last heartbeat) indexes them.
    """
    return f"{KEY_PREFIX}:fleet:node:{node}"
