"""The worker's dataset sources without services: a tar member's byte range and a Parquet cell, read from an
in-memory S3 that answers ranged and conditional GETs as S3 does."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from schemas.dataset import ParquetCell
from schemas.errors import ErrorCode, PermanentError, TransientError
from tests import images
from tests.producers.datasets import MemoryS3, image_table, tar_shard
from worker.sources.parquetcell import ParquetCellReader
from worker.sources.s3 import S3Fetcher

B = "bucket"


def test_a_tar_member_is_exactly_one_range_get_of_its_bytes() -> None:
    s3 = MemoryS3()
    body = tar_shard([("a", {"jpg": images.solid()}), ("b", {"jpg": b"B" * 9000})])
    etag = s3.put(B, "s.tar", body)
    fetcher = S3Fetcher(s3, max_bytes=1 << 20)
    offset = body.index(b"B" * 9000)

    assert b"B" * 9000 == fetcher.fetch_range(B, "s.tar", offset, 9000, etag=etag)
    assert (1, 9000) == (s3.calls["get_object"], s3.bytes_sent)


@pytest.mark.parametrize(
    ("offset", "length", "etag", "code", "words"),
    [
        (0, 10, "0" * 32, ErrorCode.INVALID_SOURCE, "changed since it was indexed"),
        (1500, 1000, None, ErrorCode.TRUNCATED_IMAGE, "ends 500 bytes into this member"),
        (4000, 10, None, ErrorCode.TRUNCATED_IMAGE, "ends before this member"),
        (0, 2 << 20, None, ErrorCode.TOO_LARGE, "the limit is"),
    ],
    ids=["shard-rewritten", "cut-member", "past-the-end", "too-large"],
)
def test_a_member_that_cannot_be_read_whole_fails_permanently_with_its_code(
    offset: int, length: int, etag: str | None, code: ErrorCode, words: str
) -> None:
    s3 = MemoryS3()
    s3.put(B, "s.tar", b"x" * 2000)
    with pytest.raises(PermanentError, match=words) as caught:
        S3Fetcher(s3, max_bytes=1 << 20).fetch_range(B, "s.tar", offset, length, etag=etag, what="k.jpg")
    assert code == caught.value.code


def test_an_empty_member_is_empty_bytes_without_a_request() -> None:
    s3 = MemoryS3()
    s3.put(B, "s.tar", b"x")
    assert b"" == S3Fetcher(s3, max_bytes=1024).fetch_range(B, "s.tar", 0, 0)
    assert 0 == s3.calls["get_object"]


def parquet_collection(s3: MemoryS3) -> tuple[list[bytes], str]:
    pictures = [images.solid((i, 10, 10)) for i in range(6)]
    etag = s3.put(B, "p.parquet", image_table([(f"k{i}", p) for i, p in enumerate(pictures)], row_group_size=3))
    return pictures, etag


def test_cells_of_one_row_group_cost_one_read_of_that_column_chunk() -> None:
    s3 = MemoryS3()
    pictures, etag = parquet_collection(s3)
    reader = ParquetCellReader(s3, max_bytes=1 << 20, cache_bytes=8 << 20)

    got = [
        reader.fetch(B, "p.parquet", ParquetCell(column="jpg", row_group=i // 3, row=i % 3), version_id=None, etag=etag)
        for i in range(6)
    ]

    assert pictures == got
    # one HEAD and footer read for the file, then one ranged GET per row group's jpg column chunk
    assert 1 == s3.calls["head_object"]
    assert s3.calls["get_object"] <= 2 + 2


def test_concurrent_readers_of_one_chunk_wait_for_a_single_load() -> None:
    s3 = MemoryS3()
    pictures, etag = parquet_collection(s3)
    reader = ParquetCellReader(s3, max_bytes=1 << 20, cache_bytes=8 << 20)
    reader.fetch(B, "p.parquet", ParquetCell(column="jpg", row_group=1, row=0), version_id=None, etag=etag)  # footer
    before = s3.calls["get_object"]
    start = threading.Barrier(8)

    def one(i: int) -> bytes:
        start.wait()
        return reader.fetch(
            B, "p.parquet", ParquetCell(column="jpg", row_group=0, row=i % 3), version_id=None, etag=etag
        )

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(8)))
    assert [pictures[i % 3] for i in range(8)] == got
    assert 1 == s3.calls["get_object"] - before


@pytest.mark.parametrize(
    ("cell", "cache", "code", "words"),
    [
        (ParquetCell(column="jpg", row_group=0, row=1), 8 << 20, ErrorCode.NOT_FOUND, "no image"),
        (ParquetCell(column="key", row_group=0, row=0), 8 << 20, ErrorCode.INVALID_SOURCE, "not image bytes"),
        (ParquetCell(column="png", row_group=0, row=0), 8 << 20, ErrorCode.INVALID_SOURCE, "no column 'png'"),
        (ParquetCell(column="jpg", row_group=5, row=0), 8 << 20, ErrorCode.INVALID_SOURCE, "has 1 row groups"),
        (ParquetCell(column="jpg", row_group=0, row=9), 8 << 20, ErrorCode.INVALID_SOURCE, "has 2 rows"),
        (ParquetCell(column="jpg", row_group=0, row=0), 1 << 20, ErrorCode.TOO_LARGE, "smaller row groups"),
    ],
    ids=["null-cell", "string-column", "no-column", "no-row-group", "no-row", "chunk-over-the-cache"],
)
def test_a_cell_that_holds_no_image_fails_with_a_clear_code(
    cell: ParquetCell, cache: int, code: ErrorCode, words: str
) -> None:
    s3 = MemoryS3()
    etag = s3.put(B, "p.parquet", image_table([("a", os.urandom(1_500_000)), ("b", None)]))
    with pytest.raises(PermanentError, match=words) as caught:
        ParquetCellReader(s3, max_bytes=1 << 22, cache_bytes=cache).fetch(
            B, "p.parquet", cell, version_id=None, etag=etag
        )
    assert code == caught.value.code


def test_a_file_rewritten_since_it_was_indexed_is_refused() -> None:
    s3 = MemoryS3()
    parquet_collection(s3)
    reader = ParquetCellReader(s3, max_bytes=1 << 20, cache_bytes=8 << 20)
    with pytest.raises(PermanentError, match="changed since it was indexed"):
        reader.fetch(B, "p.parquet", ParquetCell(column="jpg", row_group=0, row=0), version_id=None, etag="f" * 32)


class FlakyS3(MemoryS3):
    """S3 answering 503 SlowDown to ranged GETs once the footer has been read."""

    def get_object(self, **kw: object) -> dict[str, object]:
        if self.calls["get_object"] >= 1:
            from tests.producers.datasets import _error

            self.calls["get_object"] += 1
            raise _error("SlowDown", 503)
        return super().get_object(**kw)  # type: ignore[arg-type]


def test_s3_throttling_inside_a_parquet_read_stays_a_transient_error_the_job_retries() -> None:
    s3 = FlakyS3()
    _, etag = parquet_collection(s3)
    reader = ParquetCellReader(s3, max_bytes=1 << 20, cache_bytes=8 << 20)
    with pytest.raises(TransientError) as caught:
        reader.fetch(B, "p.parquet", ParquetCell(column="jpg", row_group=0, row=0), version_id=None, etag=etag)
    assert ErrorCode.FETCH_FAILED == caught.value.code
