"""Where a backfill's keys come from: ``ListObjectsV2`` pages of a prefix, and the filters applied to each key.

Listing resumes with ``StartAfter`` (any key; keys come back in UTF-8 binary order), so a checkpoint of the last
enqueued key survives restarts without relying on opaque continuation tokens. botocore asks S3 for URL-encoded
keys and decodes them, so keys with spaces, ``+`` or any Unicode arrive as stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from schemas.errors import ErrorCode, PermanentError, TransientError


@dataclass(frozen=True)
class ObjectEntry:
    """One object to (maybe) moderate. ``position`` is the inventory resume point (file, next row)."""

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    storage_class: str | None = None
    position: tuple[int, int] | None = None


def s3_error(exc: Exception, where: str) -> Exception:
    """A botocore failure as guardq's permanent/transient error with one readable line."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in {"NoSuchBucket", "NoSuchKey", "404", "NotFound"} or status == 404:
            return PermanentError(f"{where} does not exist", code=ErrorCode.NOT_FOUND)
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or status == 403:
            return PermanentError(f"access to {where} denied ({code})", code=ErrorCode.ACCESS_DENIED)
        return TransientError(f"S3 error on {where}: {code or status}", code=ErrorCode.FETCH_FAILED)
    return TransientError(f"S3 unreachable for {where}: {exc}", code=ErrorCode.FETCH_FAILED)


def list_pages(
    client: Any, bucket: str, prefix: str, *, page_size: int, start_after: str = ""
) -> Iterator[list[ObjectEntry]]:
    """Yield the objects under ``prefix`` one page at a time, after ``start_after`` when resuming."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page_size}}
    if start_after:
        params["StartAfter"] = start_after
    try:
        for page in client.get_paginator("list_objects_v2").paginate(**params):
            yield [
                ObjectEntry(
                    bucket,
                    obj["Key"],
                    size=int(obj.get("Size", 0)),
                    etag=str(obj.get("ETag", "")).strip('"') or None,
                    storage_class=obj.get("StorageClass"),
                )
                for obj in page.get("Contents", [])
            ]
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, f"s3://{bucket}/{prefix}") from None


SKIP_INCLUDE = "include"
SKIP_SIZE = "size"
SKIP_OTHER = "other"
# Objects in these classes must be restored before a GET can read them; the worker would only fail on them.
ARCHIVED_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


def skip_reason(entry: ObjectEntry, include: list[str], max_bytes: int | None) -> str | None:
    """Why an object is not enqueued, or None.

    ``include`` globs match the whole key, ignoring case (``*.jpg`` takes ``a/B.JPG``; ``*`` crosses ``/``).
    """
    if (entry.key.endswith("/") and not entry.size) or entry.storage_class in ARCHIVED_CLASSES:
        return SKIP_OTHER  # a "folder" marker, or an archived object a GET cannot read
    if include and not any(fnmatchcase(entry.key.lower(), pattern.lower()) for pattern in include):
        return SKIP_INCLUDE
    if max_bytes is not None and entry.size is not None and entry.size > max_bytes:
        return SKIP_SIZE
    return None
