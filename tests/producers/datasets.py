"""Builders of img2dataset-style collections for tests and benchmarks (tar shards, Parquet sidecars, Parquet tables
with image bytes or URLs), and an in-memory S3 stand-in that answers ranged GETs like S3 does."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

Sample = tuple[str, dict[str, bytes]]  # key, {extension: member bytes}


def tar_shard(samples: Iterable[Sample], *, fmt: int = tarfile.GNU_FORMAT, folders: bool = False) -> bytes:
    """A WebDataset shard: each sample's members ``KEY.ext`` one after another (img2dataset's layout)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if folders:
            folder = tarfile.TarInfo("sub")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
        for key, members in samples:
            for ext, body in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(body)
                info.mtime = 1_700_000_000
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def img2dataset_sample(key: str, image: bytes | None, caption: str = "a photo") -> Sample:
    members: dict[str, bytes] = {}
    if image is not None:
        members["jpg"] = image
    members["json"] = f'{{"key": "{key}", "caption": "{caption}", "status": "success"}}'.encode()
    members["txt"] = caption.encode()
    return key, members


def header_offset(shard: bytes, member: str) -> int:
    """Byte offset of ``member``'s header in ``shard`` (to damage it in tests)."""
    with tarfile.open(fileobj=io.BytesIO(shard), mode="r:") as tar:
        return next(m.offset for m in tar.getmembers() if m.name == member)


def sidecar(rows: Iterable[tuple[str, str]], *, with_status: bool = True) -> bytes:
    """img2dataset's per-shard Parquet: key, url, caption, status (``success`` or ``failed_to_download``), …"""
    rows = list(rows)
    columns: dict[str, list[Any]] = {
        "key": [k for k, _ in rows],
        "url": [f"https://example.com/{k}.jpg" for k, _ in rows],
        "caption": ["a photo"] * len(rows),
        "width": [64] * len(rows),
        "height": [48] * len(rows),
        "md5": [hashlib.md5(k.encode(), usedforsecurity=False).hexdigest() for k, _ in rows],
    }
    if with_status:
        columns["status"] = [s for _, s in rows]
        columns["error_message"] = [None if s == "success" else "404 Not Found" for _, s in rows]
    return table_bytes(pa.table(columns))


def table_bytes(table: pa.Table, *, row_group_size: int | None = None) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def image_table(rows: Iterable[tuple[str, bytes | None]], *, row_group_size: int | None = None) -> bytes:
    """A Parquet collection with the image bytes in column ``jpg`` (img2dataset's ``--output_format parquet``)."""
    rows = list(rows)
    table = pa.table(
        {
            "key": [k for k, _ in rows],
            "caption": ["a photo"] * len(rows),
            "jpg": pa.array([b for _, b in rows], type=pa.binary()),
        }
    )
    return table_bytes(table, row_group_size=row_group_size)


def url_table(rows: Iterable[tuple[str, str | None]]) -> bytes:
    rows = list(rows)
    return table_bytes(pa.table({"key": [k for k, _ in rows], "url": [u for _, u in rows]}))


@dataclass
class _Body:
    data: bytes

    def read(self, amount: int | None = None) -> bytes:
        out, self.data = (self.data, b"") if amount is None else (self.data[:amount], self.data[amount:])
        return out

    def close(self) -> None:
        return None


def _error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@dataclass
class MemoryS3:
    """Objects in a dict; ``get_object`` honours ``Range`` and ``IfMatch`` like S3; every call is counted."""

    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    etags: dict[tuple[str, str], str] = field(default_factory=dict)

    def put(self, bucket: str, key: str, body: bytes) -> str:
        self.objects[(bucket, key)] = body
        self.etags[(bucket, key)] = hashlib.md5(body, usedforsecurity=False).hexdigest()
        return self.etag(bucket, key)

    def etag(self, bucket: str, key: str) -> str:
        return self.etags[(bucket, key)]

    def _find(self, bucket: str, key: str, if_match: str | None) -> bytes:
        if (bucket, key) not in self.objects:
            raise _error("NoSuchKey", 404)
        if if_match is not None and if_match.strip('"') != self.etag(bucket, key):
            raise _error("PreconditionFailed", 412)
        return self.objects[(bucket, key)]

    def get_object(
        self, *, Bucket: str, Key: str, Range: str | None = None, IfMatch: str | None = None, **_: Any
    ) -> dict[str, Any]:
        self.calls["get_object"] += 1
        body = self._find(Bucket, Key, IfMatch)
        if Range is not None:
            start_s, end_s = Range.removeprefix("bytes=").split("-")
            start, end = int(start_s), int(end_s)
            if start >= len(body):
                raise _error("InvalidRange", 416)
            body = body[start : end + 1]
        self.bytes_sent += len(body)
        return {"Body": _Body(body), "ContentLength": len(body)}

    def head_object(self, *, Bucket: str, Key: str, IfMatch: str | None = None, **_: Any) -> dict[str, Any]:
        self.calls["head_object"] += 1
        body = self._find(Bucket, Key, IfMatch)
        return {"ContentLength": len(body), "ETag": f'"{self.etag(Bucket, Key)}"'}

    def get_paginator(self, name: str) -> MemoryS3:
        assert name == "list_objects_v2"
        return self

    def paginate(self, *, Bucket: str, Prefix: str, PaginationConfig: dict[str, int], StartAfter: str = "") -> Any:
        keys = sorted(k for b, k in self.objects if b == Bucket and k.startswith(Prefix) and k > StartAfter)
        size = PaginationConfig["PageSize"]
        for i in range(0, max(len(keys), 1), size):
            self.calls["list"] += 1
            yield {
                "Contents": [
                    {"Key": k, "Size": len(self.objects[(Bucket, k)]), "ETag": f'"{self.etag(Bucket, k)}"'}
                    for k in keys[i : i + size]
                ]
            }
