"""A backfill's record as it sits in its Redis hash (``schemas.keys.backfill_key``), typed.

Written by ``producers/backfill`` (the options once, at creation; the checkpoint with every batch of jobs; the
counters by the verdict tally) and read by the results sink too (a dataset's manifest names the backfill's source
and says when it is complete), so the layout is here, in the contract both sides import. Field ``options`` holds
:class:`BackfillOptions` as JSON; every other field is one attribute of :class:`BackfillProgress`, plus
``completed``/``failed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ErrorCode, PermanentError

BackfillState = Literal["running", "interrupted", "failed", "finished"]
OPTIONS_FIELD = "options"


class BackfillOptions(BaseModel):
    """What a backfill enqueues; fixed when it is created."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str  # s3://bucket/prefix, or the manifest URL
    mode: Literal["list", "manifest"]
    bucket: str
    prefix: str = ""
    include: list[str] = Field(default_factory=list)
    max_bytes: int | None = Field(default=None, ge=0)
    model: str
    policy_ref: str | None = None
    tenant: str = "default"
    metadata: dict[str, Any] = Field(default_factory=dict)
    queue: str
    results: str | None = None  # s3://bucket/prefix for the verdicts as JSON Lines (registered before each run)
    # Dataset mode (docs/datasets.md): what the objects under the prefix are, and how results are written.
    format: Literal["objects", "webdataset", "parquet"] = "objects"
    key_column: str = "key"
    image_column: str | None = None
    url_column: str | None = None
    results_format: Literal["jsonl", "parquet"] = "jsonl"

    @property
    def dataset(self) -> bool:
        return self.format != "objects"


@dataclass
class BackfillProgress:
    """The checkpoint and counters (everything but the options); one flat Redis hash field each."""

    state: BackfillState = "running"
    last_key: str = ""
    manifest_file: int = 0
    manifest_row: int = 0
    listed: int = 0
    enqueued: int = 0
    skipped_include: int = 0
    skipped_size: int = 0
    skipped_other: int = 0
    shards: int = 0  # dataset mode: shards whose every row was sent
    shard_key: str = ""  # dataset mode: the shard being sent, its rows sent so far and its ETag
    shard_pos: int = 0
    shard_etag: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""

    @property
    def skipped(self) -> int:
        return self.skipped_include + self.skipped_size + self.skipped_other

    def cursor_fields(self) -> dict[str | bytes, str | int | float]:
        """The fields written with every enqueued job (one HSET): position and the counters that go with it."""
        out: dict[str | bytes, str | int | float] = {
            "last_key": self.last_key,
            "manifest_file": self.manifest_file,
            "manifest_row": self.manifest_row,
            "listed": self.listed,
            "enqueued": self.enqueued,
            "skipped_include": self.skipped_include,
            "skipped_size": self.skipped_size,
            "skipped_other": self.skipped_other,
            "shards": self.shards,
            "shard_key": self.shard_key,
            "shard_pos": self.shard_pos,
            "shard_etag": self.shard_etag,
        }
        return out

    def all_fields(self) -> dict[str | bytes, str | int | float]:
        return {name: value for name, value in asdict(self).items()}  # noqa: C416 - widens the key type

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> BackfillProgress:
        out = cls()
        for f in fields(cls):
            if f.name in raw:
                current = getattr(out, f.name)
                setattr(out, f.name, type(current)(raw[f.name]) if not isinstance(current, str) else raw[f.name])
        return out


@dataclass
class BackfillRecord:
    backfill_id: str
    options: BackfillOptions
    progress: BackfillProgress
    completed: int = 0
    failed: int = 0

    @classmethod
    def from_hash(cls, backfill_id: str, raw: dict[str, str]) -> BackfillRecord:
        """The record of a backfill hash read with ``HGETALL`` (decoded); :class:`PermanentError` ``not_found``
        when it holds no options (no such backfill)."""
        if OPTIONS_FIELD not in raw:
            raise PermanentError(f"no backfill {backfill_id!r}", code=ErrorCode.NOT_FOUND)
        return cls(
            backfill_id,
            BackfillOptions.model_validate_json(raw[OPTIONS_FIELD]),
            BackfillProgress.from_hash(raw),
            completed=int(raw.get("completed", 0)),
            failed=int(raw.get("failed", 0)),
        )
