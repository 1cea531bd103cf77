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


def job_key(job_id: str) -> str:
    """Hash holding a job's state (queued/running/completed/failed), attempts and terminal event."""
    return f"{KEY_PREFIX}:job:{job_id}"


def terminal_guard_key(job_id: str) -> str:
    """Set once when a job's terminal event is published; guards against a second terminal event."""
    return f"{KEY_PREFIX}:job:{job_id}:terminal"


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
