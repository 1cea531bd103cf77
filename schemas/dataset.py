"""Dataset mode on the wire: where one sample's image lies inside a shard, and which row of which shard a job is.

A dataset backfill (``guardq backfill … --format webdataset|parquet``) never copies images: a job's
:class:`~schemas.job.ImageRef` names the shard object (``s3://bucket/…/00000.tar`` or ``….parquet``) and a
``member`` saying where the sample's image is inside it:

- :class:`TarMember`: the byte range of a tar member's data (``offset``, ``length``); the worker reads exactly that
  range with one S3 Range GET, conditional on the shard's ETag.
- :class:`ParquetCell`: one cell of a binary column (row group, row within it, column name) of a Parquet file.
- :class:`AbsentMember`: the sample has no readable image (its image member is missing from the shard, the URL
  column holds no usable URL…); the worker ends the job as failed with ``code`` without fetching anything, so the
  row still gets its one terminal event.

The job also carries a :class:`DatasetSample` (the shard, the sample key and its position), copied onto the
verdict event, so per-shard results can be assembled from events alone.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ErrorCode

MAX_KEY_CHARS = 1024


class TarMember(BaseModel):
    """A tar member's data: ``length`` bytes at ``offset`` of the shard object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["tar"] = "tar"
    name: str = Field(min_length=1, max_length=MAX_KEY_CHARS)
    offset: int = Field(ge=0)
    length: int = Field(ge=0)

    @property
    def fragment(self) -> str:
        return self.name


class ParquetCell(BaseModel):
    """One binary cell of a Parquet file: ``column`` at ``row`` of row group ``row_group``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["parquet"] = "parquet"
    column: str = Field(min_length=1, max_length=256)
    row_group: int = Field(ge=0)
    row: int = Field(ge=0)

    @property
    def fragment(self) -> str:
        return f"{self.column}[{self.row_group}:{self.row}]"


# Why a producer may mark a sample's image absent; the worker fails the job with exactly this code.
AbsentCode = Literal[ErrorCode.NOT_FOUND, ErrorCode.INVALID_SOURCE, ErrorCode.FORBIDDEN_SOURCE]


class AbsentMember(BaseModel):
    """A sample whose image cannot be read at all; ``name`` is what was expected (``KEY.jpg``, the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["absent"] = "absent"
    name: str = Field(min_length=1, max_length=MAX_KEY_CHARS)
    code: AbsentCode = ErrorCode.NOT_FOUND
    message: str = Field(min_length=1, max_length=500)

    @property
    def fragment(self) -> str:
        return self.name


ShardMember = Annotated[TarMember | ParquetCell | AbsentMember, Field(discriminator="kind")]


class DatasetSample(BaseModel):
    """Which row a job is: ``key`` (what results join on) at position ``index`` of input shard ``shard``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shard: str = Field(min_length=6, max_length=4096, pattern=r"^s3://")
    key: str = Field(max_length=MAX_KEY_CHARS)
    index: int = Field(ge=0)
