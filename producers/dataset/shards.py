"""The shards of a dataset prefix, in listing order, and the rows of each in pages, resuming mid-shard.

WebDataset: every ``*.tar`` under the prefix is a shard; ``X.parquet`` listed next to ``X.tar`` is its sidecar
(it always sorts just before it). Compressed tars (``.tar.gz`` …) cannot be read by byte range: each becomes a
shard with that problem and no rows, so it shows in status instead of being passed over. Parquet: every
``*.parquet`` is a shard. ``--include`` globs select shard keys.

Resuming: the checkpoint names the last finished shard (``last_key``: listing restarts after it) and the shard in
progress with how many of its rows were already handled (``shard_pos``) and its ETag. The walk of that shard
starts from its beginning (rows come in a fixed order) and leaves out the first ``shard_pos`` rows; a shard that
vanished or changed meanwhile stops the backfill with a clear error (its jobs so far point at the old bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from producers.backfill.sources import ObjectEntry, list_pages
from producers.dataset.parquetrows import parquet_samples
from producers.dataset.samples import Sample, Shard, ShardDone, ShardSummary, Sidecar
from producers.dataset.webdataset import webdataset_samples
from schemas.backfill import BackfillOptions
from schemas.errors import ErrorCode, PermanentError

COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
Unit = Sample | ShardDone


@dataclass(frozen=True)
class Resume:
    """Where a resumed walk starts: after shard ``last_key``, and ``pos`` rows into shard ``shard_key``."""

    last_key: str = ""
    shard_key: str = ""
    pos: int = 0
    etag: str = ""


def _selected(key: str, include: list[str]) -> bool:
    return not include or any(fnmatchcase(key.lower(), pattern.lower()) for pattern in include)


def list_shards(client: Any, options: BackfillOptions, *, page_size: int, start_after: str) -> Iterator[Shard]:
    """The input shards after ``start_after``, in listing order (with the sidecar of each tar, if any)."""
    sidecars: dict[str, ObjectEntry] = {}
    for page in list_pages(client, options.bucket, options.prefix, page_size=page_size, start_after=start_after):
        for obj in page:
            key = obj.key
            if options.format == "parquet":
                if key.endswith(".parquet") and _selected(key, options.include):
                    yield Shard(obj.bucket, key, obj.size or 0, obj.etag)
                continue
            if key.endswith(".parquet"):
                sidecars = {key: obj}  # only the one listed right before its tar can be a sidecar
                continue
            if (key.endswith(".tar") or key.endswith(COMPRESSED_TARS)) and _selected(key, options.include):
                stem = key.rsplit(".tar", 1)[0] if key.endswith(".tar") else ""
                side = sidecars.get(f"{stem}.parquet") if stem else None
                sidecar = Sidecar(side.key, side.size or 0, side.etag) if side is not None else None
                yield Shard(obj.bucket, key, obj.size or 0, obj.etag, sidecar)
            sidecars = {}


def shard_units(client: Any, shard: Shard, options: BackfillOptions) -> Iterator[Unit]:
    """One shard's rows, then its :class:`ShardDone`."""
    if options.format == "parquet":
        return parquet_samples(
            client,
            shard,
            key_column=options.key_column,
            image_column=options.image_column,
            url_column=options.url_column,
        )
    if shard.key.endswith(COMPRESSED_TARS):
        summary = ShardSummary(shard.key, shard.uri, shard.etag)
        summary.problems.append("compressed tar: members cannot be read by byte range; store shards as plain .tar")
        return iter([ShardDone(shard, 0, summary)])
    return webdataset_samples(client, shard, key_column=options.key_column, max_bytes=options.max_bytes)


def dataset_pages(client: Any, options: BackfillOptions, *, page_size: int, resume: Resume) -> Iterator[list[Unit]]:
    """Pages of at most ``page_size`` rows; each shard's last page ends with its :class:`ShardDone`."""
    pending = resume if resume.shard_key else None
    for shard in list_shards(client, options, page_size=min(page_size, 1000), start_after=resume.last_key):
        skip = 0
        if pending is not None:
            _check_same_shard(shard, pending)
            skip, pending = pending.pos, None
        page: list[Unit] = []
        for unit in shard_units(client, shard, options):
            if isinstance(unit, Sample) and unit.position < skip:
                continue  # sent before the backfill stopped
            page.append(unit)
            if len(page) >= page_size:
                yield page
                page = []
        if page:
            yield page
    if pending is not None:
        raise PermanentError(
            f"shard {pending.shard_key}, partly sent when the backfill stopped, is no longer listed",
            code=ErrorCode.NOT_FOUND,
        )


def _check_same_shard(shard: Shard, resume: Resume) -> None:
    if shard.key != resume.shard_key:
        raise PermanentError(
            f"shard {resume.shard_key}, partly sent when the backfill stopped, is no longer listed "
            f"(the next shard is {shard.key})",
            code=ErrorCode.NOT_FOUND,
        )
    if resume.etag and (shard.etag or "") != resume.etag:
        raise PermanentError(
            f"shard {shard.key} changed since the backfill started sending it (ETag {resume.etag} -> {shard.etag}); "
            "its jobs so far point at the old bytes: start a new backfill",
            code=ErrorCode.INVALID_SOURCE,
        )
