"""Image sources: turn an :class:`~schemas.job.ImageRef` into bytes (S3, http(s) behind the SSRF guard, uploads)."""

from __future__ import annotations

from typing import Any

from schemas.errors import ErrorCode, PermanentError
from schemas.job import ImageRef, SourceKind
from schemas.settings import Settings
from schemas.uploads import locate_upload
from worker.sources.http import HttpFetcher
from worker.sources.netguard import AddressPolicy
from worker.sources.s3 import S3Fetcher, make_s3_client


class ImageSource:
    """Dispatches a reference to the right fetcher; one instance (and its clients) per worker process."""

    def __init__(self, settings: Settings, *, s3_client: Any | None = None) -> None:
        self._settings = settings
        self._s3 = S3Fetcher(
            s3_client or make_s3_client(settings, max_pool=settings.max_in_flight() + 4),
            max_bytes=settings.max_image_bytes,
        )
        self._http = HttpFetcher(
            policy=AddressPolicy(settings.url_allowed_networks),
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            max_redirects=settings.url_max_redirects,
            max_connections=settings.max_in_flight() + 4,
        )

    def close(self) -> None:
        self._http.close()

    def fetch(self, ref: ImageRef) -> bytes:
        if ref.kind is SourceKind.S3:
            return self._s3.fetch(ref.bucket, ref.key, ref.version_id)
        if ref.kind is SourceKind.HTTP:
            return self._http.fetch(ref.uri)
        return self._fetch_upload(ref.key)

    def _fetch_upload(self, key: str) -> bytes:
        location = locate_upload(self._settings.upload_store, key)
        if location.path is not None:
            try:
                size = location.path.stat().st_size
            except FileNotFoundError:
                raise PermanentError(f"upload {key!r} is not in the store", code=ErrorCode.NOT_FOUND) from None
            if size > self._settings.max_image_bytes:
                raise PermanentError(f"upload {key!r} is {size:,} bytes", code=ErrorCode.TOO_LARGE)
            return location.path.read_bytes()
        assert location.bucket is not None and location.key is not None
        return self._s3.fetch(location.bucket, location.key)
