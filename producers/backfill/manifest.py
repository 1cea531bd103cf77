"""Keys from an S3 Inventory report: ``manifest.json`` names gzip CSV parts whose columns ``fileSchema`` lists.

Layout (AWS docs, "storage-inventory-location"): ``manifest.json`` has ``destinationBucket`` (an ARN),
``fileFormat`` (only ``CSV`` is read here), ``fileSchema`` (e.g. ``"Bucket, Key, Size, ETag"``) and
``files[]`` with ``key`` and ``MD5checksum`` of each part. Keys in inventory CSVs are form-URL-encoded (a space
is ``+``), so they are decoded with ``unquote_plus``. Delete markers and non-current versions are not moderated.
Parts are streamed (never held whole in memory) and each part's MD5 is checked once it has been read.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from producers.backfill.sources import ObjectEntry, s3_error
from schemas.errors import ConfigError, ErrorCode, PermanentError
from schemas.s3url import parse_s3_url

MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class InventoryManifest:
    url: str
    bucket: str  # where the CSV parts live
    columns: tuple[str, ...]
    files: tuple[tuple[str, str | None], ...]  # (key, MD5 of the part as stored)


def read_manifest(client: Any, url: str) -> InventoryManifest:
    """Fetch and check ``manifest.json``; only CSV inventories with Bucket and Key columns are accepted."""
    bucket, key = parse_s3_url(url)
    if not key:
        raise ConfigError(f"{url!r} names no manifest object (expected s3://bucket/…/manifest.json)")
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_MANIFEST_BYTES + 1)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, url) from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise ConfigError(f"{url} is not JSON: not an S3 Inventory manifest.json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ConfigError(f"{url} has no files[] list: not an S3 Inventory manifest.json")
    fmt = str(doc.get("fileFormat", "CSV")).upper()
    if fmt != "CSV":
        raise ConfigError(f"{url}: inventory format {fmt} is not supported; configure the inventory as CSV")
    columns = tuple(c.strip() for c in str(doc.get("fileSchema", "")).split(",") if c.strip())
    if "Bucket" not in columns or "Key" not in columns:
        raise ConfigError(f"{url}: fileSchema {doc.get('fileSchema')!r} lacks the Bucket and Key columns")
    destination = str(doc.get("destinationBucket") or "")
    files = []
    for item in doc["files"]:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise ConfigError(f"{url}: every files[] entry needs a key")
        files.append((item["key"], item.get("MD5checksum")))
    return InventoryManifest(url, destination.rsplit(":", 1)[-1] or bucket, columns, tuple(files))


class _Md5Reader(io.RawIOBase):
    """Pass bytes through while hashing them, so a part is verified without a second read."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.md5 = hashlib.md5(usedforsecurity=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._body.read(len(buffer))
        self.md5.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _entry(row: list[str], index: dict[str, int], position: tuple[int, int]) -> ObjectEntry | None:
    def col(name: str) -> str:
        i = index.get(name)
        return row[i] if i is not None and i < len(row) else ""

    if col("IsDeleteMarker").lower() == "true" or col("IsLatest").lower() == "false":
        return None
    size = col("Size")
    return ObjectEntry(
        bucket=col("Bucket"),
        key=unquote_plus(col("Key")),
        size=int(size) if size.isdigit() else None,
        etag=col("ETag") or None,
        version_id=col("VersionId") or None,
        storage_class=col("StorageClass") or None,
        position=position,
    )


def inventory_pages(
    client: Any, manifest: InventoryManifest, *, page_size: int, start: tuple[int, int] = (0, 0)
) -> Iterator[list[ObjectEntry]]:
    """Yield entries in pages; ``start`` = (part index, rows of that part already handled) when resuming."""
    index = {name: i for i, name in enumerate(manifest.columns)}
    page: list[ObjectEntry] = []
    for file_no in range(start[0], len(manifest.files)):
        key, md5 = manifest.files[file_no]
        where = f"s3://{manifest.bucket}/{key}"
        skip = start[1] if file_no == start[0] else 0
        try:
            raw = _Md5Reader(client.get_object(Bucket=manifest.bucket, Key=key)["Body"])
            buffered = io.BufferedReader(raw, 1 << 16)
            stream: Any = gzip.GzipFile(fileobj=buffered) if key.endswith(".gz") else buffered
            for row_no, row in enumerate(csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline=""))):
                if row_no < skip or not row:
                    continue
                entry = _entry(row, index, (file_no, row_no + 1))
                if entry is not None:
                    page.append(entry)
                if len(page) >= page_size:
                    yield page
                    page = []
            buffered.read()  # the gzip trailer may leave bytes unread; hash them all
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(exc, where) from None
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
            raise PermanentError(
                f"inventory part {where} is unreadable: {exc}", code=ErrorCode.INVALID_SOURCE
            ) from None
        if md5 and raw.md5.hexdigest() != md5:
            raise PermanentError(f"inventory part {where} fails its MD5 check", code=ErrorCode.INVALID_SOURCE)
    if page:
        yield page
