"""Jobs and image references: parsing, the wire form, and refusal of bad input."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.events import event_id
from schemas.job import MAX_METADATA_BYTES, ImageRef, ModerationJob, SourceKind


def test_s3_references_keep_bucket_key_and_version() -> None:
    ref = ImageRef.parse("s3://photos/2026/a b/ü.jpg?versionId=v42")
    assert (SourceKind.S3, "photos", "2026/a b/ü.jpg", "v42") == (ref.kind, ref.bucket, ref.key, ref.version_id)
    assert "s3://photos/2026/a b/ü.jpg?versionId=v42" == str(ref)


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("https://example.com/x.png", SourceKind.HTTP),
        ("http://example.com/x", SourceKind.HTTP),
        ("upload://abc.jpg", SourceKind.UPLOAD),
    ],
)
def test_url_and_upload_references_are_recognised(uri: str, kind: SourceKind) -> None:
    assert kind == ImageRef.parse(uri).kind


@pytest.mark.parametrize(
    "uri",
    ["file:///etc/passwd", "gopher://x/1", "s3://bucket-only", "s3:///key", "https://", "upload://", "/tmp/a.jpg"],
)
def test_unsupported_or_incomplete_references_are_refused(uri: str) -> None:
    with pytest.raises(ValidationError):
        ImageRef.parse(uri)


def test_a_job_round_trips_through_its_json_message() -> None:
    job = ModerationJob(
        image=ImageRef.parse("s3://b/k.jpg"), tenant="acme", metadata={"post": 1}, policy_ref="strict@2"
    )
    assert job == ModerationJob.model_validate(job.to_message())
    assert job == ModerationJob.model_validate_json(job.model_dump_json())


def test_unknown_fields_wrong_schema_version_and_two_policy_sources_are_refused() -> None:
    base = ModerationJob(image=ImageRef.parse("s3://b/k.jpg")).to_message()
    for bad in (base | {"surprise": 1}, base | {"schema_version": 2}, base | {"policy_ref": "a", "policy": {}}):
        with pytest.raises(ValidationError):
            ModerationJob.model_validate(bad)


def test_metadata_is_bounded() -> None:
    with pytest.raises(ValidationError, match="metadata is"):
        ModerationJob(image=ImageRef.parse("s3://b/k.jpg"), metadata={"x": "y" * MAX_METADATA_BYTES})


def test_event_ids_are_deterministic_per_job() -> None:
    assert event_id("job-1") == event_id("job-1")
    assert event_id("job-1") != event_id("job-2")
