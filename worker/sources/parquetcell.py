"""Read one image cell of a Parquet file in S3 (dataset mode, ``--format parquet --image-column``).

Parquet compresses a column chunk's pages as a whole, so one cell cannot be cut out by a byte range of the file:
the smallest readable unit is the column chunk of one row group. The reader therefore fetches exactly that chunk
(one Range GET through pyarrow, never the whole file), keeps it in a per-process LRU bounded in bytes
(``GUARDQ_DATASET_CHUNK_CACHE_BYTES``) and serves the chunk's other rows from it; a backfill sends a row group's
rows one after another, so a worker's threads mostly hit the chunk its first thread loaded (single flight: the
others wait for that load instead of repeating it). A chunk larger than the cache fails its rows as ``too_large``
with the advice to write smaller row groups; memory stays bounded either way. Footers are cached per file.

All reads are conditional on the file's ETag when the job carries one: a file rewritten since it was indexed
fails as ``invalid_source`` rather than serving another row.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from schemas.dataset import ParquetCell
from schemas.errors import ErrorCode, GuardqError, PermanentError, TransientError
from worker.sources.s3 import map_client_error

_FOOTERS = 64  # Parquet footers kept (a few KB each)


class RangedObject(io.RawIOBase):
    """A read-only, seekable view of one S3 object; every ``read`` is one Range GET of exactly what is asked."""

    def __init__(self, client: Any, bucket: str, key: str, size: int, *, version_id: str | None, etag: str | None):
        super().__init__()
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._extra: dict[str, str] = {}
        if version_id:
            self._extra["VersionId"] = version_id
        if etag:
            self._extra["IfMatch"] = etag if etag.startswith('"') else f'"{etag}"'
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        where = f"s3://{self._bucket}/{self._key}"
        try:
            body = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end - 1}", **self._extra
            )["Body"]
            data: bytes = body.read()
            body.close()
        except ClientError as exc:
            raise _client_error(exc, where) from None
        except BotoCoreError as exc:
            raise TransientError(f"S3 unreachable for {where}: {exc}", code=ErrorCode.FETCH_FAILED) from None
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _client_error(exc: ClientError, where: str) -> Exception:
    if str(exc.response.get("Error", {}).get("Code", "")) in {"PreconditionFailed", "412"}:
        return PermanentError(f"{where} changed since it was indexed (ETag differs)", code=ErrorCode.INVALID_SOURCE)
    return map_client_error(exc, where)


class _Slot:
    """One chunk being loaded: the first thread loads, the others wait on ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: pa.Array[Any] | None = None
        self.error: BaseException | None = None


class ParquetCellReader:
    """Cells of binary columns, one column chunk per (file, row group, column) read and kept while it is hot."""

    def __init__(self, client: Any, *, max_bytes: int, cache_bytes: int) -> None:
        self._client = client
        self._max_bytes = max_bytes
        self._capacity = cache_bytes
        self._lock = threading.Lock()
        self._chunks: OrderedDict[tuple[str, ...], pa.Array[Any]] = OrderedDict()
        self._loading: dict[tuple[str, ...], _Slot] = {}
        self._footers: OrderedDict[tuple[str, ...], tuple[int, pq.FileMetaData]] = OrderedDict()
        self._held = 0

    @property
    def cached_bytes(self) -> int:
        return self._held

    def fetch(self, bucket: str, key: str, cell: ParquetCell, *, version_id: str | None, etag: str | None) -> bytes:
        where = f"s3://{bucket}/{key}#{cell.fragment}"
        ident = (bucket, key, version_id or "", etag or "")
        array = self._chunk((*ident, str(cell.row_group), cell.column), cell, where)
        if cell.row >= len(array):
            raise PermanentError(f"{where}: the row group has {len(array)} rows", code=ErrorCode.INVALID_SOURCE)
        value = array[cell.row].as_py()
        if value is None:
            raise PermanentError(f"{where}: the row has no image (null)", code=ErrorCode.NOT_FOUND)
        if len(value) > self._max_bytes:
            raise PermanentError(
                f"{where} is {len(value):,} bytes; the limit is {self._max_bytes:,}", code=ErrorCode.TOO_LARGE
            )
        return bytes(value)

    # --- the chunk cache ---------------------------------------------------------------------------------
    def _chunk(self, ckey: tuple[str, ...], cell: ParquetCell, where: str) -> pa.Array[Any]:
        with self._lock:
            hit = self._chunks.get(ckey)
            if hit is not None:
                self._chunks.move_to_end(ckey)
                return hit
            slot = self._loading.get(ckey)
            owner = slot is None
            if slot is None:
                slot = self._loading[ckey] = _Slot()
        if not owner:
            slot.done.wait()
            if slot.error is not None:
                raise slot.error
            assert slot.value is not None
            return slot.value
        try:
            slot.value = self._load(ckey, cell, where)
            self._keep(ckey, slot.value)
            return slot.value
        except BaseException as exc:
            slot.error = exc
            raise
        finally:
            with self._lock:
                self._loading.pop(ckey, None)
            slot.done.set()

    def _keep(self, ckey: tuple[str, ...], array: pa.Array[Any]) -> None:
        size = array.nbytes
        with self._lock:
            self._chunks[ckey] = array
            self._held += size
            while self._held > self._capacity and len(self._chunks) > 1:
                _, old = self._chunks.popitem(last=False)
                self._held -= old.nbytes

    def _load(self, ckey: tuple[str, ...], cell: ParquetCell, where: str) -> pa.Array[Any]:
        bucket, key, version_id, etag = ckey[:4]
        size, meta = self._footer(bucket, key, version_id or None, etag or None, where)
        if cell.row_group >= meta.num_row_groups:
            raise PermanentError(
                f"{where}: the file has {meta.num_row_groups} row groups", code=ErrorCode.INVALID_SOURCE
            )
        names = meta.schema.to_arrow_schema().names
        if cell.column not in names:
            raise PermanentError(f"{where}: no column {cell.column!r}", code=ErrorCode.INVALID_SOURCE)
        chunk = meta.row_group(cell.row_group).column(names.index(cell.column))
        if max(chunk.total_uncompressed_size, chunk.total_compressed_size) > self._capacity:
            raise PermanentError(
                f"{where}: the row group's {cell.column!r} column is {chunk.total_uncompressed_size:,} bytes, more "
                f"than GUARDQ_DATASET_CHUNK_CACHE_BYTES ({self._capacity:,}); write the file with smaller row groups",
                code=ErrorCode.TOO_LARGE,
            )
        source = RangedObject(self._client, bucket, key, size, version_id=version_id or None, etag=etag or None)
        try:
            table = pq.ParquetFile(pa.PythonFile(source, mode="r"), metadata=meta).read_row_group(
                cell.row_group, columns=[cell.column]
            )
        except GuardqError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise PermanentError(f"{where}: unreadable Parquet: {exc}", code=ErrorCode.INVALID_SOURCE) from None
        column = table.column(cell.column)
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            raise PermanentError(
                f"{where}: column {cell.column!r} holds {column.type}, not image bytes", code=ErrorCode.INVALID_SOURCE
            )
        return column.combine_chunks()

    def _footer(
        self, bucket: str, key: str, version_id: str | None, etag: str | None, where: str
    ) -> tuple[int, pq.FileMetaData]:
        fkey = (bucket, key, version_id or "", etag or "")
        with self._lock:
            found = self._footers.get(fkey)
            if found is not None:
                self._footers.move_to_end(fkey)
                return found
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        if etag:
            params["IfMatch"] = etag if etag.startswith('"') else f'"{etag}"'
        try:
            size = int(self._client.head_object(**params)["ContentLength"])
        except ClientError as exc:
            raise _client_error(exc, where) from None
        except BotoCoreError as exc:
            raise TransientError(f"S3 unreachable for {where}: {exc}", code=ErrorCode.FETCH_FAILED) from None
        source = RangedObject(self._client, bucket, key, size, version_id=version_id, etag=etag)
        try:
            meta = pq.ParquetFile(pa.PythonFile(source, mode="r")).metadata
        except GuardqError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise PermanentError(
                f"{where}: not a readable Parquet file: {exc}", code=ErrorCode.INVALID_SOURCE
            ) from None
        with self._lock:
            self._footers[fkey] = (size, meta)
            while len(self._footers) > _FOOTERS:
                self._footers.popitem(last=False)
        return size, meta
