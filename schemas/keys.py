"""Names shared by producers and workers: the task, queues, the verdict stream and Redis key layout."""

from __future__ import annotations

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


def job_key(job_id: str) -> str:
    """Hash holding a job's state (queued/running/completed/failed), attempts and terminal event."""
    return f"{KEY_PREFIX}:job:{job_id}"


def terminal_guard_key(job_id: str) -> str:
    """Set once when a job's terminal event is published; guards against a second terminal event."""
    return f"{KEY_PREFIX}:job:{job_id}:terminal"


def policy_key(name: str) -> str:
    """Hash of a stored policy: field ``<version>`` holds that version's Policy JSON, ``latest`` the newest."""
    return f"{KEY_PREFIX}:policy:{name}"


FLEET_NODES = f"{KEY_PREFIX}:fleet:nodes"


def fleet_node_key(node: str) -> str:
    """Hash describing one worker node (``gpu0@host``): its server, model, GPU, in-flight and throughput.

    Written by the worker's heartbeat and by the launcher that supervises it, read by ``guardq fleet status``;
    it expires when neither refreshes it. ``FLEET_NODES`` (a sorted set scored by last heartbeat) indexes them.
    """
    return f"{KEY_PREFIX}:fleet:node:{node}"
