"""A seekable, read-only view of one S3 object that reads through a window of ranged GETs.

Used to walk tar headers (512 bytes each, data skipped by seeking) and to read Parquet footers and key columns
without ever holding or spooling the whole object: a read inside the current window costs nothing, a read outside
it fetches the next window from there (one ``Range`` GET), and a read larger than the window is one GET of exactly
that size. The window adapts: one that served many reads (small members, several headers per window) doubles up
to ``window`` bytes, one that served a single header (a member larger than the window) halves down to 64 KiB. So
small members cost one GET per window of them and are read through (fewer round trips than skipping), while large
members cost one small GET per header and their data is never fetched. Memory stays at one window whatever the
object's size. Every GET is conditional on the object's ETag, so a shard rewritten while it is walked fails
loudly instead of mixing two layouts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from producers.backfill.sources import s3_error
from schemas.errors import ErrorCode, PermanentError

DEFAULT_WINDOW = 1 << 20
MIN_WINDOW = 64 << 10


@dataclass
class ReadStats:
    requests: int = 0
    bytes: int = 0


class S3Window(io.RawIOBase):
    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        size: int,
        etag: str | None = None,
        window: int = DEFAULT_WINDOW,
        stats: ReadStats | None = None,
    ) -> None:
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self.size = size
        self._etag = etag
        self._window = window
        self._fetch = window  # the next window's size (adapts between MIN_WINDOW and window)
        self._hits = 0  # reads served by the current window
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self.stats = stats or ReadStats()

    @property
    def where(self) -> str:
        return f"s3://{self._bucket}/{self._key}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        buf_end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self._pos and end <= buf_end):
            if end - self._pos > self._window:
                data = self._get(self._pos, end)  # a big read (a Parquet column chunk): exactly it, not kept
                self._pos += len(data)
                return data
            self._refill()
        self._hits += 1
        start = self._pos - self._buf_start
        data = self._buf[start : start + (end - self._pos)]
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _refill(self) -> None:
        if self._buf:
            few = self._hits <= 2  # a header and the byte before it: the window's rest was skipped data
            self._fetch = max(self._fetch // 2, MIN_WINDOW) if few else min(self._fetch * 2, self._window)
        self._hits = 0
        self._buf_start, self._buf = self._pos, self._get(self._pos, min(self.size, self._pos + self._fetch))

    def _get(self, start: int, end: int) -> bytes:
        params: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={start}-{end - 1}"}
        if self._etag:
            params["IfMatch"] = self._etag if self._etag.startswith('"') else f'"{self._etag}"'
        try:
            body = self._client.get_object(**params)["Body"]
            data: bytes = body.read()
            body.close()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in {"PreconditionFailed", "412"}:
                raise PermanentError(
                    f"{self.where} changed while it was being read (ETag differs)", code=ErrorCode.INVALID_SOURCE
                ) from None
            raise s3_error(exc, self.where) from None
        except BotoCoreError as exc:
            raise s3_error(exc, self.where) from None
        self.stats.requests += 1
        self.stats.bytes += len(data)
        return data
