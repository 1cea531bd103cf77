"""Rows of a Parquet collection: ``--image-column`` (image bytes in the file) or ``--url-column`` (image URLs).

The walk reads the footer and, one row group at a time in batches, only the key column (plus the URL column in
URL mode and a ``status`` column when there is one) through ranged GETs; image bytes are never read here. An
image row's job references its cell (row group, row, column) for the worker to read; a URL row's job carries the
URL, which the worker fetches behind its SSRF guard. A row whose URL is empty or not an http(s) URL still becomes
a job, marked absent with the reason, so it ends as a failed row instead of vanishing. Rows whose ``status`` is
set and not ``success`` (img2dataset never got the image) are counted as skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from producers.dataset.samples import SKIP_LONG_KEY, Sample, Shard, ShardDone, ShardSummary, too_long
from producers.dataset.webdataset import SKIP_NOT_DOWNLOADED
from producers.dataset.window import S3Window
from schemas.dataset import AbsentMember, ParquetCell
from schemas.errors import ErrorCode
from schemas.job import FORBIDDEN_SCHEME_ERROR, ImageRef

BATCH_ROWS = 8192


def parquet_samples(
    client: Any, shard: Shard, *, key_column: str, image_column: str | None, url_column: str | None
) -> Iterator[Sample | ShardDone]:
    """Every row of the file in row order, then its :class:`ShardDone`."""
    summary = ShardSummary(shard.key, shard.uri, shard.etag)
    column = image_column or url_column
    assert column is not None
    reader = S3Window(client, shard.bucket, shard.key, size=shard.size, etag=shard.etag)
    try:
        parquet = pq.ParquetFile(pa.PythonFile(reader, mode="r"))
    except (pa.ArrowException, OSError, ValueError) as exc:
        summary.problems.append(f"not a readable Parquet file: {exc}")
        yield ShardDone(shard, 0, summary)
        return
    names = parquet.schema_arrow.names
    if column not in names:
        rows = parquet.metadata.num_rows
        summary.problems.append(f"no column {column!r} (has {', '.join(names)[:300]}): its {rows:,} rows were not sent")
        yield ShardDone(shard, 0, summary)
        return
    if key_column not in names:
        summary.problems.append(f"no key column {key_column!r}: keys are row numbers")
    wanted = [c for c in (key_column, "status", url_column) if c is not None and c in names]
    position = 0
    for group in range(parquet.metadata.num_row_groups):
        row = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=wanted or [column]):
            values = {name: batch.column(name).to_pylist() for name in wanted}
            for i in range(batch.num_rows):
                key = str(values[key_column][i] if key_column in values else position)
                status = values["status"][i] if "status" in values else "success"
                summary.rows += 1
                if status != "success" or too_long(key):
                    reason = SKIP_NOT_DOWNLOADED if status != "success" else SKIP_LONG_KEY
                    summary.skip(reason)
                    yield Sample(shard, position, position, key, None, skip=reason)
                else:
                    summary.jobs += 1
                    if image_column is not None:
                        cell = ParquetCell(column=image_column, row_group=group, row=row)
                        ref = ImageRef(uri=shard.uri, etag=shard.etag, member=cell)
                    else:
                        assert url_column is not None
                        ref = _url_ref(shard, key, values[url_column][i], summary)
                    yield Sample(shard, position, position, key, ref)
                position += 1
                row += 1
    yield ShardDone(shard, position, summary)


def _url_ref(shard: Shard, key: str, url: object, summary: ShardSummary) -> ImageRef:
    """The row's URL as an image reference, or an absent member saying why it cannot be one."""
    if url is None or not str(url).strip():
        return _absent(shard, key, ErrorCode.NOT_FOUND, f"row {key} has no URL", summary)
    try:
        return ImageRef.parse(str(url).strip())
    except ValidationError as exc:
        err = exc.errors()[0]
        code = ErrorCode.FORBIDDEN_SOURCE if err["type"] == FORBIDDEN_SCHEME_ERROR else ErrorCode.INVALID_SOURCE
        return _absent(shard, key, code, f"row {key}: {err['msg']}"[:500], summary)


def _absent(shard: Shard, key: str, code: ErrorCode, message: str, summary: ShardSummary) -> ImageRef:
    summary.missing += 1
    member = AbsentMember(name=key or "(empty key)", code=code, message=message)
    return ImageRef(uri=shard.uri, etag=shard.etag, member=member)
