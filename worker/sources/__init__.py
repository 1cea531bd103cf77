"""Image sources: turn an :class:`~schemas.job.ImageRef` into bytes (S3, http(s) behind the SSRF guard, uploads,
and dataset shard members: a tar member's byte range or a Parquet cell)."""

from __future__ import annotations

from typing import Any

from schemas.dataset import AbsentMember, ParquetCell, TarMember
from schemas.errors import ErrorCode, PermanentError
from schemas.job import ImageRef, SourceKind
from schemas.settings import Settings
from schemas.uploads import locate_upload
from worker.sources.http import HttpFetcher
from worker.sources.netguard import AddressPolicy
from worker.sources.parquetcell import ParquetCellReader
from worker.sources.s3 import S3Fetcher, make_s3_client


class ImageSource:
    """Dispatches a reference to the right fetcher; one instance (and its clients) per worker process."""

    def __init__(self, settings: Settings, *, s3_client: Any | None = None) -> None:
        self._settings = settings
        client = s3_client or make_s3_client(settings, max_pool=settings.max_in_flight() + 4)
        self._s3 = S3Fetcher(client, max_bytes=settings.max_image_bytes)
        self._cells = ParquetCellReader(
            client, max_bytes=settings.max_image_bytes, cache_bytes=settings.dataset_chunk_cache_bytes
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
        if ref.member is not None:
            return self._fetch_member(ref)
        if ref.kind is SourceKind.S3:
            return self._s3.fetch(ref.bucket, ref.key, ref.version_id)
        if ref.kind is SourceKind.HTTP:
            return self._http.fetch(ref.uri)
        return self._fetch_upload(ref.key)

    def _fetch_member(self, ref: ImageRef) -> bytes:
        member = ref.member
        if isinstance(member, TarMember):
            return self._s3.fetch_range(
                ref.bucket,
                ref.key,
                member.offset,
                member.length,
                version_id=ref.version_id,
                etag=ref.etag,
                what=member.name,
            )
        if isinstance(member, ParquetCell):
            return self._cells.fetch(ref.bucket, ref.key, member, version_id=ref.version_id, etag=ref.etag)
        assert isinstance(member, AbsentMember)
        raise PermanentError(f"{ref}: {member.message}", code=member.code)

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
