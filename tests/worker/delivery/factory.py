"""Verdict events built in code and published straight onto a stream, for delivery tests that need no GPU worker."""

from __future__ import annotations

import uuid

import redis

from schemas.errors import ErrorCode
from schemas.events import STREAM_FIELD, CloudEvent, ErrorInfo, EventData, EventType, ImageFacts, event_id
from schemas.keys import VERDICT_STREAM
from schemas.verdict import Verdict

CATEGORIES = ["NA: None applying", "O2: Violence, Harm, or Cruelty", "O3: Sexual Content"]


def make_event(
    *,
    tenant: str = "default",
    backfill_id: str | None = None,
    failed: bool = False,
    rating: str = "Safe",
    category: str = "NA: None applying",
    job_id: str | None = None,
) -> CloudEvent:
    job = job_id or uuid.uuid4().hex
    uri = f"s3://bucket/{job}.jpg"
    data = EventData(
        job_id=job,
        tenant=tenant,
        backfill_id=backfill_id,
        image=ImageFacts(uri=uri, sha256="ab" * 32, width=64, height=48, bytes=1000, format="JPEG"),
        verdict=None if failed else Verdict(rating=rating, category=category, rationale="test", unsafe_score=0.1),  # type: ignore[arg-type]
        error=ErrorInfo(code=ErrorCode.NOT_FOUND, message="gone", retryable=False, attempts=1) if failed else None,
    )
    return CloudEvent(
        id=event_id(job),
        source="urn:guardq:test",
        type=EventType.FAILED if failed else EventType.COMPLETED,
        subject=uri,
        tenant=tenant,
        data=data,
    )


def publish(client: redis.Redis, event: CloudEvent, stream: str = VERDICT_STREAM) -> str:
    """XADD the event the way the worker does (one field ``event``); return its stream id."""
    sid = client.xadd(stream, {STREAM_FIELD: event.to_json()})
    return sid.decode() if isinstance(sid, bytes) else str(sid)
