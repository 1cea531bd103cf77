"""Verdict events: CloudEvents 1.0 in structured JSON mode.

``type`` is ``guardq.moderation.completed`` or ``guardq.moderation.failed``; ``id`` is derived from the job id
alone, so a redelivered job yields the same id and consumers can dedupe on it; ``subject`` is the image URI.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.dataset import DatasetSample
from schemas.errors import ErrorCode
from schemas.frames import FramesSummary
from schemas.policy import PolicyInfo
from schemas.taxonomy import PromptVersion
from schemas.verdict import Verdict

_EVENT_NAMESPACE = uuid.UUID("5b0f3c2e-7a7d-4c55-9d8e-6a1f0b2c4d10")
STREAM_FIELD = "event"


class EventType(StrEnum):
    COMPLETED = "guardq.moderation.completed"
    FAILED = "guardq.moderation.failed"


def event_id(job_id: str) -> str:
    """Deterministic id of a job's one terminal event."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, job_id))


class ImageFacts(BaseModel):
    """What the worker learned about the image (unknown fields stay null on early failures)."""

    uri: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    format: str | None = None


class ModelInfo(BaseModel):
    """Which model answered, as the worker saw it."""

    name: str
    prompt_version: PromptVersion | None = None
    backend: str = "sglang"
    served_model: str | None = None
    simulated: bool = False


class Timings(BaseModel):
    """Milliseconds per stage of the attempt that ended the job."""

    queued_ms: float | None = None
    fetch_ms: float | None = None
    prepare_ms: float | None = None
    infer_ms: float | None = None
    total_ms: float | None = None


class ErrorInfo(BaseModel):
    """Why a job failed; ``code`` is stable, ``message`` is for people."""

    code: ErrorCode
    message: str
    retryable: bool
    attempts: int


class EventData(BaseModel):
    """The ``data`` of a verdict event."""

    job_id: str
    tenant: str = "default"
    backfill_id: str | None = None
    image: ImageFacts
    verdict: Verdict | None = None
    needs_review: bool = False
    cached: bool = False
    verdict_only: bool = False
    # The policy's rationale mode that produced this verdict: "always" (one pass), "flagged" (verdict first, the
    # rationale continued from it only for flagged verdicts: absent otherwise), "never".
    rationale_mode: Literal["always", "flagged", "never"] | None = None
    policy: PolicyInfo | None = None
    model: ModelInfo | None = None
    timings: Timings = Field(default_factory=Timings)
    metadata: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    frames: FramesSummary | None = None  # animated images and videos only (schemas/frames.py)
    sample: DatasetSample | None = None  # the job's dataset row (shard, key, index), for per-shard results


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope; extension attributes ``tenant``, ``needsreview`` and ``simulated``."""

    model_config = ConfigDict(extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: EventType
    subject: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    tenant: str | None = None
    needsreview: bool | None = None
    simulated: bool | None = None
    data: EventData

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @property
    def completed(self) -> bool:
        return self.type is EventType.COMPLETED
