"""Moderation jobs and the image references they carry.

A job holds a *reference* to an image, never its bytes: ``s3://bucket/key`` (optionally ``?versionId=``), an
``http(s)://`` URL that the worker fetches behind its SSRF guard, or ``upload://<key>`` for bytes kept in the
configured upload store. A dataset backfill's job names a shard object plus a ``member`` inside it (a tar member's
byte range, a Parquet cell, or an image known to be absent; see ``schemas/dataset.py``) and carries its ``sample``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.dataset import DatasetSample, ShardMember
from schemas.policy import Policy

SCHEMA_VERSION: Literal[1] = 1
FORBIDDEN_SCHEME_ERROR = "forbidden_source"  # pydantic error type of an image URI with a scheme guardq never opens
MAX_METADATA_BYTES = 16_384
JobId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]


class SourceKind(StrEnum):
    """Where the worker fetches an image from."""

    S3 = "s3"
    HTTP = "http"
    UPLOAD = "upload"


class ImageRef(BaseModel):
    """A reference to one image. Build it with :meth:`parse` from a URI string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(min_length=1, max_length=4096)
    version_id: str | None = None
    etag: str | None = None
    size: int | None = Field(default=None, ge=0)
    member: ShardMember | None = None  # where the image lies inside the object (dataset shards only)

    @field_validator("uri")
    @classmethod
    def _supported_scheme(cls, uri: str) -> str:
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme not in {"s3", "http", "https", "upload"}:
            message = f"unsupported image source {uri[:80]!r}: use s3://, http(s):// or upload://"
            if scheme:  # file://, gopher://, ftp://, dict://...: a URL guardq will never open (SSRF)
                raise PydanticCustomError(FORBIDDEN_SCHEME_ERROR, message)
            raise ValueError(message)
        rest = uri.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        if (scheme == "s3" and not (bucket and key)) or (scheme == "upload" and not rest.strip("/")):
            raise ValueError(f"image source {uri[:80]!r} names no object")
        if scheme in {"http", "https"} and not urlsplit(uri).hostname:
            raise ValueError(f"image URL {uri[:80]!r} has no host")
        return uri

    @model_validator(mode="after")
    def _member_in_s3_object(self) -> ImageRef:
        if self.member is not None and not self.uri.lower().startswith("s3://"):
            raise ValueError("a shard member can only be read from an s3:// object")
        return self

    @classmethod
    def parse(cls, source: str, **extra: Any) -> ImageRef:
        """Parse ``s3://b/k?versionId=v``, ``https://...`` or ``upload://key`` into a reference."""
        if source.startswith("s3://") and "?versionId=" in source:
            base, query = source.split("?", 1)
            versions = parse_qs(query).get("versionId")
            return cls(uri=base, version_id=versions[0] if versions else None, **extra)
        return cls(uri=source, **extra)

    @property
    def kind(self) -> SourceKind:
        scheme = self.uri.split("://", 1)[0].lower()
        return SourceKind.HTTP if scheme in {"http", "https"} else SourceKind(scheme)

    @property
    def bucket(self) -> str:
        """The S3 bucket (``s3://`` references only)."""
        return self.uri[len("s3://") :].split("/", 1)[0]

    @property
    def key(self) -> str:
        """The S3 object key, or the upload store key for ``upload://`` references."""
        rest = self.uri.split("://", 1)[1]
        return rest.split("/", 1)[1] if self.kind is SourceKind.S3 else rest

    def __str__(self) -> str:
        text = self.uri if self.version_id is None else f"{self.uri}?versionId={self.version_id}"
        return text if self.member is None else f"{text}#{self.member.fragment}"


class Priority(StrEnum):
    """Interactive jobs (live uploads) are consumed ahead of bulk ones (backfills)."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


def new_job_id() -> str:
    return uuid.uuid4().hex


class ModerationJob(BaseModel):
    """One image to moderate under one policy with one model: the single argument of ``guardq.moderate``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: JobId = Field(default_factory=new_job_id)
    image: ImageRef
    model: str | None = None
    policy: Policy | None = None
    policy_ref: str | None = Field(default=None, max_length=128)
    tenant: str = Field(default="default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    priority: Priority = Priority.INTERACTIVE
    backfill_id: str | None = Field(default=None, max_length=64)
    callback_url: str | None = Field(default=None, max_length=2048)
    sample: DatasetSample | None = None  # the dataset row this job is (dataset backfills only)

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, default=str))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
        return value

    @model_validator(mode="after")
    def _one_policy_source(self) -> ModerationJob:
        if self.policy is not None and self.policy_ref is not None:
            raise ValueError("give either an inline policy or policy_ref, not both")
        return self

    def to_message(self) -> dict[str, Any]:
        """The JSON-compatible dict sent as the task's one argument."""
        return self.model_dump(mode="json", exclude_none=True)
