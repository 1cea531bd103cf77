"""The records guardq keeps in Redis hashes, typed: a job's (``schemas.keys.job_key``) and a webhook delivery's
(``worker.delivery.keys.webhook_delivery_key``).

Field names are declared here once, as :class:`JobField` and :class:`DeliveryField`; Python code names a field
through them, never as a string of its own, and the Lua scripts that change these hashes use exactly these names
(``tests/schemas/test_records.py`` reads every script and checks it). :class:`JobRecord` and
:class:`DeliveryRecord` read a whole hash into typed values. The layouts are those of a running deployment: a
field is added here before anything writes it, and none is renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from schemas.webhooks import Delivery


class JobField(StrEnum):
    """Fields of a job's hash. Open: what the producer wrote and the worker's attempt bookkeeping; finished: the
    compact record (:data:`JOB_FINISHED_FIELDS`) the publish step leaves, plus the results sink's claim."""

    STATE = "state"  # queued (producer) -> running | queued | retrying (worker) -> completed | failed: publish guard
    TENANT = "tenant"
    IMAGE = "image"  # the image reference (open jobs)
    CREATED_AT = "created_at"  # ISO 8601, the job's own creation time
    QUEUE = "queue"  # the Celery queue its message was sent to
    ENQUEUED_AT = "enqueued_at"  # producer's unix time of the send
    MESSAGE = "message"  # the task message (JSON) a reconciler re-sends if the broker loses it (open jobs)
    BACKFILL_ID = "backfill_id"  # backfill jobs only
    ATTEMPTS = "attempts"  # the attempt that last began
    DELIVERIES = "deliveries"  # broker deliveries that began an attempt (kept once finished only if > attempts)
    DUPLICATE_DELIVERIES = "duplicate_deliveries"  # deliveries that found the job already finished
    UPDATED_AT = "updated_at"  # Redis time of the last state change (open jobs)
    WORKER = "worker"  # the node that ran the attempt
    RECONCILED = "reconciled"  # times the reconciler re-sent the job's message
    STREAM_ID = "stream_id"  # the terminal event's id in the verdict stream (finished jobs)
    CALLBACK_URL = "callback_url"  # the job's webhook callback, recorded with the terminal event (finished jobs)
    RESULTS_PART = "results_part"  # the results part that holds the job's event (claimed by the results sink)
    EVENT = "event"  # legacy: the whole terminal event, in records written before it moved to the stream


# What a finished job's hash keeps (the fields present; the rest only when they apply): worker/publish_terminal.lua.
JOB_FINISHED_FIELDS: tuple[JobField, ...] = (
    JobField.STATE,  # completed | failed
    JobField.STREAM_ID,
    JobField.TENANT,
    JobField.ATTEMPTS,
    JobField.DELIVERIES,  # only when more than the attempts (a redelivery)
    JobField.BACKFILL_ID,  # bulk jobs: where the results went
    JobField.WORKER,  # the node that ran the attempt that ended it
    JobField.QUEUE,  # where it was routed (which model's lane)
    JobField.CALLBACK_URL,  # the webhook dispatcher reads it
    JobField.DUPLICATE_DELIVERIES,
    JobField.RECONCILED,
)
FINISHED_STATES = frozenset({"completed", "failed"})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobRecord(BaseModel):
    """A job's hash as typed values; absent fields are None (the hash changes shape as the job goes on)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: str = "queued"  # a record without a state yet is a job being enqueued
    tenant: str | None = None
    image: str | None = None
    created_at: str | None = None
    queue: str | None = None
    enqueued_at: float | None = None
    message: str | None = None
    backfill_id: str | None = None
    attempts: int | None = None
    deliveries: int | None = None
    duplicate_deliveries: int | None = None
    updated_at: float | None = None
    worker: str | None = None
    reconciled: int | None = None
    stream_id: str | None = None
    callback_url: str | None = None
    results_part: str | None = None
    event: str | None = None

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> JobRecord:
        """The record of an ``HGETALL`` reply (fields this version does not know are left out)."""
        known = {f.value for f in JobField}
        values = {_text(k): _text(v) for k, v in raw.items()}
        return cls.model_validate({k: v for k, v in values.items() if k in known})

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def finished_at(self) -> float | None:
        """When the terminal event was published (the stream id's milliseconds)."""
        return int(self.stream_id.split("-", 1)[0]) / 1000 if self.stream_id else None


class DeliveryField(StrEnum):
    """Fields of a webhook delivery's hash (``worker/delivery/webhooks/deliveries.py`` writes every one)."""

    RECORD = "record"  # schemas.webhooks.Delivery as JSON: event, target, tenant, replay, attempt limit
    BODY = "body"  # the exact bytes sent: the CloudEvent JSON as it sits on the stream
    ATTEMPTS = "attempts"
    STATE = "state"  # schemas.webhooks.DeliveryState: pending | delivered | dead
    NEXT_AT = "next_at"  # unix time the next attempt is due (also its score in guardq:webhooks:due)
    LEASE = "lease"  # token of the scheduler's current claim ('' when unclaimed)
    LAST_STATUS = "last_status"  # HTTP status of the last attempt ('' when it got none)
    LAST_ERROR = "last_error"  # what the last attempt got, in words
    UPDATED_AT = "updated_at"  # ISO 8601 time of the last attempt
    REASON = "reason"  # why it was dead-lettered


# What a delivery's status shows (the API, ``guardq webhooks test``): everything but the body and the lease.
DELIVERY_PRIVATE_FIELDS = frozenset({DeliveryField.BODY, DeliveryField.LEASE})


class DeliveryRecord(BaseModel):
    """A delivery's hash as typed values (``record`` stays JSON until :meth:`delivery` reads it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record: str
    body: bytes | None = None
    attempts: int = 0
    state: str = ""
    next_at: float | None = None
    lease: str = ""
    last_status: str = ""
    last_error: str = ""
    updated_at: str | None = None
    reason: str | None = None

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes | None]) -> DeliveryRecord | None:
        """The record of an ``HGETALL``/``HMGET`` reply, or None without a record (gone, or never created)."""
        values = {_text(k): v for k, v in raw.items() if v is not None}
        if DeliveryField.RECORD not in values:
            return None
        return cls.model_validate(
            {k: (v if k == DeliveryField.BODY else _text(v)) for k, v in values.items() if k in set(DeliveryField)}
        )

    def delivery(self) -> Delivery:
        return Delivery.model_validate_json(self.record)
