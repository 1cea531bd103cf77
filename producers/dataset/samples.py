"""What a dataset walk yields: one :class:`Sample` per row of a shard, then one :class:`ShardDone` with the shard's
summary. A shard's rows come in a fixed order (archive or row order, then the rows the sidecar lists but the shard
lacks), so position ``n`` of a shard is the same row on every walk; resuming skips the positions already sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.dataset import MAX_KEY_CHARS
from schemas.job import ImageRef

SKIP_SIZE = "size"  # image larger than --max-bytes
SKIP_OTHER = "other"  # a member group that is no sample (keys starting with "__")
SKIP_LONG_KEY = "key_too_long"  # a key or member name longer than a job may carry (schemas/dataset.py)


def too_long(*names: str) -> bool:
    return any(len(name) > MAX_KEY_CHARS for name in names)


@dataclass(frozen=True)
class Sidecar:
    """A WebDataset shard's Parquet sidecar (``00000.parquet`` next to ``00000.tar``)."""

    key: str
    size: int
    etag: str | None


@dataclass(frozen=True)
class Shard:
    """One input shard: an S3 object, with its Parquet sidecar when the layout has one."""

    bucket: str
    key: str
    size: int
    etag: str | None
    sidecar: Sidecar | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Sample:
    """Row ``index`` of ``shard``: its key and where its image is (``image``), or why it is not sent (``skip``)."""

    shard: Shard
    position: int  # place in the walk of the shard (the resume cursor counts these)
    index: int
    key: str
    image: ImageRef | None
    skip: str | None = None


@dataclass
class ShardSummary:
    """Counts of one shard's walk; stored with the shard's record when its last job is sent."""

    shard: str
    uri: str
    etag: str | None
    rows: int = 0  # samples found: jobs + skipped
    jobs: int = 0  # jobs sent for it, the rows its results Parquet will hold
    missing: int = 0  # jobs for samples without a readable image (they end as failed)
    skipped: dict[str, int] = field(default_factory=dict)  # by reason, including rows the sidecar says failed
    ignored_members: int = 0  # tar members that are not regular files (directories, links): never samples
    sidecar: str | None = None
    problems: list[str] = field(default_factory=list)  # damaged shard, unreadable sidecar, missing column…

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "uri": self.uri,
            "etag": self.etag,
            "rows": self.rows,
            "jobs": self.jobs,
            "missing": self.missing,
            "skipped": dict(self.skipped),
            "ignored_members": self.ignored_members,
            "sidecar": self.sidecar,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class ShardDone:
    """The end of one shard's walk (after its last sample)."""

    shard: Shard
    position: int
    summary: ShardSummary
