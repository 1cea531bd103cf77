"""Build the CloudEvents a job ends with: one completed or one failed event."""

from __future__ import annotations

from typing import Any

from schemas.errors import ErrorCode, GuardqError
from schemas.events import CloudEvent, ErrorInfo, EventData, EventType, ImageFacts, ModelInfo, Timings, event_id
from schemas.frames import FramesSummary
from schemas.job import ModerationJob
from schemas.policy import PolicyInfo
from schemas.verdict import Verdict
from worker.image import PreparedImage


def image_facts(uri: str, prepared: PreparedImage | None = None) -> ImageFacts:
    if prepared is None:
        return ImageFacts(uri=uri)
    return ImageFacts(
        uri=uri,
        sha256=prepared.sha256,
        width=prepared.width,
        height=prepared.height,
        bytes=prepared.original_bytes,
        format=prepared.source_format,
    )


def completed_event(
    *,
    source: str,
    job: ModerationJob,
    image: ImageFacts,
    verdict: Verdict,
    policy: PolicyInfo,
    model: ModelInfo,
    timings: Timings,
    needs_review: bool = False,
    cached: bool = False,
    verdict_only: bool = False,
    rationale_mode: str | None = None,
    frames: FramesSummary | None = None,
) -> CloudEvent:
    data = EventData(
        job_id=job.job_id,
        tenant=job.tenant,
        backfill_id=job.backfill_id,
        image=image,
        verdict=verdict,
        needs_review=needs_review,
        cached=cached,
        verdict_only=verdict_only,
        rationale_mode=rationale_mode,
        policy=policy,
        model=model,
        timings=timings,
        metadata=job.metadata,
        frames=frames,
        sample=job.sample,
    )
    return CloudEvent(
        id=event_id(job.job_id),
        source=source,
        type=EventType.COMPLETED,
        subject=str(job.image),
        tenant=job.tenant,
        needsreview=needs_review or None,
        simulated=model.simulated or None,
        data=data,
    )


def failed_event(
    *,
    source: str,
    job_id: str,
    error: GuardqError | Exception,
    attempts: int,
    job: ModerationJob | None = None,
    raw: dict[str, Any] | None = None,
    image: ImageFacts | None = None,
    policy: PolicyInfo | None = None,
    model: ModelInfo | None = None,
    timings: Timings | None = None,
) -> CloudEvent:
    """A failed event; works even for a message that never parsed as a job (``raw`` is then the message)."""
    if isinstance(error, GuardqError):
        info = ErrorInfo(code=error.code, message=error.message, retryable=error.retryable, attempts=attempts)
    else:
        info = ErrorInfo(
            code=ErrorCode.INTERNAL_ERROR,
            message=f"{type(error).__name__}: {error}"[:500],
            retryable=False,
            attempts=attempts,
        )
    subject = str(job.image) if job else _raw_uri(raw)
    tenant = job.tenant if job else _raw_str(raw, "tenant", "default")
    data = EventData(
        job_id=job_id,
        tenant=tenant,
        backfill_id=job.backfill_id if job else None,
        image=image or ImageFacts(uri=subject),
        policy=policy,
        model=model,
        timings=timings or Timings(),
        metadata=job.metadata if job else {},
        error=info,
        sample=job.sample if job else None,
    )
    return CloudEvent(
        id=event_id(job_id),
        source=source,
        type=EventType.FAILED,
        subject=subject,
        tenant=tenant,
        simulated=(model.simulated or None) if model else None,
        data=data,
    )


def _raw_str(raw: dict[str, Any] | None, key: str, default: str) -> str:
    value = (raw or {}).get(key)
    return value if isinstance(value, str) and value else default


def _raw_uri(raw: dict[str, Any] | None) -> str:
    image = (raw or {}).get("image")
    if isinstance(image, dict) and isinstance(image.get("uri"), str):
        return str(image["uri"])[:4096]
    return "unknown"
