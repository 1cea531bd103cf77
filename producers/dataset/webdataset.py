"""Rows of a WebDataset tar shard (img2dataset layout: ``KEY.jpg``, ``KEY.json``, ``KEY.txt`` per sample), checked
against its Parquet sidecar (``00000.parquet``: ``key``, ``status``, … one row per attempted sample) when present.

A sample is a run of consecutive members sharing a key (WebDataset's rule: the member path up to the first dot of
its file name). Its image is the member with the first image extension in :data:`IMAGE_EXTENSIONS`; the job
references that member's byte range. A sample with no image member still becomes a job, marked absent, so it
ends as a failed row (``not_found``) rather than vanishing. With a sidecar, every key it lists as downloaded
(``status == "success"``, or every key when it has no status column) but the shard lacks also becomes such a
row (the shard may be damaged or cut short); keys the sidecar lists as not downloaded are counted as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import groupby
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from producers.dataset.samples import (
    SKIP_LONG_KEY,
    SKIP_OTHER,
    SKIP_SIZE,
    Sample,
    Shard,
    ShardDone,
    ShardSummary,
    too_long,
)
from producers.dataset.tarwalk import TarEntry, WalkEnd, walk_tar
from producers.dataset.window import S3Window
from schemas.dataset import AbsentMember, TarMember
from schemas.errors import ErrorCode, GuardqError
from schemas.job import ImageRef

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
SKIP_NOT_DOWNLOADED = "not_downloaded"  # the sidecar's status says img2dataset never got the image


def split_name(name: str) -> tuple[str, str]:
    """``a/000001.seg.png`` -> (``a/000001``, ``seg.png``): WebDataset's key and extension."""
    name = name.removeprefix("./")
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _image_of(members: list[TarEntry]) -> TarEntry | None:
    by_ext = {split_name(m.name)[1]: m for m in reversed(members)}
    return next((by_ext[ext] for ext in IMAGE_EXTENSIONS if ext in by_ext), None)


def read_sidecar(client: Any, shard: Shard, key_column: str, summary: ShardSummary) -> dict[str, bool] | None:
    """Key -> downloaded, in sidecar order; None (with the reason in ``summary.problems``) if unusable."""
    sidecar = shard.sidecar
    assert sidecar is not None
    try:
        reader = S3Window(client, shard.bucket, sidecar.key, size=sidecar.size, etag=sidecar.etag)
        parquet = pq.ParquetFile(pa.PythonFile(reader, mode="r"))
        names = parquet.schema_arrow.names
        if key_column not in names:
            summary.problems.append(f"sidecar {sidecar.key} has no {key_column!r} column: not used")
            return None
        has_status = "status" in names
        columns = [key_column, *(["status"] if has_status else [])]
        listed: dict[str, bool] = {}
        for batch in parquet.iter_batches(batch_size=8192, columns=columns):
            keys = batch.column(0).to_pylist()
            statuses = batch.column(1).to_pylist() if has_status else [None] * len(keys)
            for key, status in zip(keys, statuses, strict=True):
                if key is not None:
                    listed[str(key)] = status == "success" if has_status else True
        return listed
    except GuardqError as exc:
        if exc.retryable:
            raise
        summary.problems.append(f"sidecar {sidecar.key} unreadable: {exc}")
    except (pa.ArrowException, OSError, ValueError) as exc:
        summary.problems.append(f"sidecar {sidecar.key} unreadable: {exc}")
    return None


def webdataset_samples(
    client: Any, shard: Shard, *, key_column: str = "key", max_bytes: int | None = None
) -> Iterator[Sample | ShardDone]:
    """Every row of the shard in a fixed order, then its :class:`ShardDone`."""
    summary = ShardSummary(shard.key, shard.uri, shard.etag, sidecar=shard.sidecar.key if shard.sidecar else None)
    listed = read_sidecar(client, shard, key_column, summary) if shard.sidecar else None
    seen: set[str] = set()
    end = WalkEnd()
    position = 0
    reader = S3Window(client, shard.bucket, shard.key, size=shard.size, etag=shard.etag)
    for key, group in _samples(walk_tar(reader, end)):
        if listed is not None:
            seen.add(key)
        yield _tar_sample(shard, position, key, group, max_bytes, summary)
        position += 1
    if end.problem:
        summary.problems.append(end.problem)
    summary.ignored_members = end.skipped
    for key, downloaded in (listed or {}).items():
        if key in seen:
            continue
        if not downloaded or too_long(key):
            reason = SKIP_LONG_KEY if downloaded else SKIP_NOT_DOWNLOADED
            summary.rows += 1
            summary.skip(reason)
            yield Sample(shard, position, position, key, None, skip=reason)
            position += 1
            continue
        why = f"the sidecar lists sample {key} as downloaded but the shard has no member for it"
        if end.problem:
            why += f" ({end.problem})"
        yield _absent(shard, position, key, why[:500], summary)
        position += 1
    yield ShardDone(shard, position, summary)


def _samples(entries: Iterable[TarEntry]) -> Iterator[tuple[str, list[TarEntry]]]:
    for key, group in groupby(entries, key=lambda e: split_name(e.name)[0]):
        yield key, list(group)


def _tar_sample(
    shard: Shard, position: int, key: str, members: list[TarEntry], max_bytes: int | None, summary: ShardSummary
) -> Sample:
    summary.rows += 1
    if key.startswith("__"):  # WebDataset's reserved keys (__key__, __meta__…): not a sample
        summary.skip(SKIP_OTHER)
        return Sample(shard, position, position, key, None, skip=SKIP_OTHER)
    if too_long(key, *(m.name for m in members)):
        summary.skip(SKIP_LONG_KEY)
        return Sample(shard, position, position, key, None, skip=SKIP_LONG_KEY)
    image = _image_of(members)
    if image is None:
        names = ", ".join(m.name for m in members)[:300]
        summary.rows -= 1  # counted again by _absent
        return _absent(shard, position, key, f"sample {key} has no image member ({names})", summary)
    if max_bytes is not None and image.size > max_bytes:
        summary.skip(SKIP_SIZE)
        return Sample(shard, position, position, key, None, skip=SKIP_SIZE)
    summary.jobs += 1
    ref = ImageRef(
        uri=shard.uri,
        etag=shard.etag,
        size=image.size,
        member=TarMember(name=image.name, offset=image.offset, length=image.size),
    )
    return Sample(shard, position, position, key, ref)


def _absent(shard: Shard, position: int, key: str, message: str, summary: ShardSummary) -> Sample:
    summary.rows += 1
    summary.jobs += 1
    summary.missing += 1
    member = AbsentMember(name=key or "(empty key)", code=ErrorCode.NOT_FOUND, message=message)
    return Sample(shard, position, position, key, ImageRef(uri=shard.uri, etag=shard.etag, member=member))
