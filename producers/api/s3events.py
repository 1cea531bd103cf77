"""S3 event notifications in their three shapes, reduced to the ObjectCreated records worth a job.

- Direct (what S3 sends to SQS/Lambda, or a relay posts): ``{"Records": [...]}``, keys form-URL-encoded
  (a space arrives as ``+``, a literal ``+`` as ``%2B``), decoded here with ``unquote_plus``.
- The same payload wrapped by SNS (the envelope's ``Message`` string), decoded the same way.
- EventBridge: ``detail-type: "Object Created"`` with ``detail.bucket.name`` and ``detail.object.key``; its keys
  are not URL-encoded and are used as they are.
``s3:TestEvent`` (sent when notifications are configured; it has no ``Records``) is recognised and ignored.
Records other than ObjectCreated (removals, restores, …) are counted and ignored. ``sequencer`` orders events of
one key; with bucket and key it identifies one object write, which is what the intake dedupes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus

from producers.api.errors import ApiError

Shape = Literal["direct", "sns", "eventbridge"]


@dataclass(frozen=True)
class S3Record:
    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_name: str = "ObjectCreated:Put"
    event_time: str | None = None

    @property
    def dedupe_token(self) -> str:
        """What makes this write unique: the sequencer, or (lacking one) etag, version and time."""
        return self.sequencer or f"{self.etag}|{self.version_id}|{self.event_time}"


@dataclass
class ParsedEvents:
    shape: Shape
    records: list[S3Record] = field(default_factory=list)
    ignored: int = 0
    test_event: bool = False


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_s3_event", message)


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _size(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def is_test_event(doc: dict[str, Any]) -> bool:
    return doc.get("Event") == "s3:TestEvent"


def _created(name: str) -> bool:
    return name.removeprefix("s3:").startswith("ObjectCreated:")  # MinIO prefixes "s3:"


def parse_records(doc: dict[str, Any], shape: Shape) -> ParsedEvents:
    """Parse a direct or SNS-delivered notification (``Records`` or a test event)."""
    out = ParsedEvents(shape)
    if is_test_event(doc):
        out.test_event = True
        return out
    records = doc.get("Records")
    if not isinstance(records, list):
        raise _invalid("not an S3 event notification: no Records list")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise _invalid(f"Records[{i}] is not an object")
        name = str(record.get("eventName", ""))
        if not _created(name):
            out.ignored += 1
            continue
        s3 = _obj(record.get("s3"))
        bucket = _obj(s3.get("bucket")).get("name")
        obj = _obj(s3.get("object"))
        if not bucket or not obj.get("key"):
            raise _invalid(f"Records[{i}] lacks s3.bucket.name or s3.object.key")
        out.records.append(
            S3Record(
                bucket=str(bucket),
                key=unquote_plus(str(obj["key"])),
                size=_size(obj.get("size")),
                etag=_str(obj.get("eTag")),
                version_id=_str(obj.get("versionId")),
                sequencer=_str(obj.get("sequencer")),
                event_name=name,
                event_time=_str(record.get("eventTime")),
            )
        )
    return out


def is_eventbridge(doc: dict[str, Any]) -> bool:
    return "detail-type" in doc and isinstance(doc.get("detail"), dict)


def parse_eventbridge(doc: dict[str, Any]) -> ParsedEvents:
    """Parse one EventBridge event from S3 (keys are used verbatim: EventBridge does not URL-encode them)."""
    out = ParsedEvents("eventbridge")
    if doc.get("source") not in (None, "aws.s3"):
        raise _invalid(f"EventBridge event from {doc.get('source')!r}, expected aws.s3")
    if doc.get("detail-type") != "Object Created":
        out.ignored = 1
        return out
    detail = _obj(doc.get("detail"))
    bucket = _obj(detail.get("bucket")).get("name")
    obj = _obj(detail.get("object"))
    if not bucket or not obj.get("key"):
        raise _invalid("EventBridge event lacks detail.bucket.name or detail.object.key")
    out.records.append(
        S3Record(
            bucket=str(bucket),
            key=str(obj["key"]),
            size=_size(obj.get("size")),
            etag=_str(obj.get("etag")),
            version_id=_str(obj.get("version-id")),
            sequencer=_str(obj.get("sequencer")),
            event_name=f"ObjectCreated:{detail.get('reason') or 'EventBridge'}",
            event_time=_str(doc.get("time")),
        )
    )
    return out
