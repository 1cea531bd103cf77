"""Fetch objects from any S3-compatible store with one boto3 client per worker process."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from schemas.errors import ErrorCode, PermanentError, TransientError, WorkerFault
from schemas.settings import Settings

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
# The worker's own setup is wrong, whatever the object: every job would fail the same way (worker/faults.py).
_WORKER_FAULTS = {
    "InvalidAccessKeyId": "s3_credentials",
    "SignatureDoesNotMatch": "s3_credentials",
    "ExpiredToken": "s3_credentials",
    "InvalidToken": "s3_credentials",
    "TokenRefreshRequired": "s3_credentials",
    "InvalidClientTokenId": "s3_credentials",
    "RequestTimeTooSkewed": "clock_skew",
    "AuthorizationHeaderMalformed": "s3_region",
}
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, NoRegionError)
_TOO_LARGE_CODES = {"InvalidRange"}
_PRECONDITION_CODES = {"PreconditionFailed", "412"}


def make_s3_client(settings: Settings, *, max_pool: int = 64) -> Any:
    """A boto3 S3 client for the configured endpoint (standard AWS_* credentials)."""
    config = Config(
        region_name=settings.s3_region,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=settings.fetch_connect_timeout_s,
        read_timeout=settings.fetch_timeout_s,
        max_pool_connections=max_pool,
        s3={"addressing_style": settings.s3_addressing_style},
    )
    return boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def map_client_error(exc: ClientError, where: str) -> Exception:
    """Translate a botocore error into guardq's permanent/transient tree."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _WORKER_FAULTS:
        message = str(exc.response.get("Error", {}).get("Message", "") or code)
        return WorkerFault(f"S3 refuses this worker ({code}: {message}) reading {where}", cause=_WORKER_FAULTS[code])
    if code in _NOT_FOUND or status == 404:
        return PermanentError(f"{where} does not exist", code=ErrorCode.NOT_FOUND)
    if code in _DENIED or status == 403:
        return PermanentError(f"access to {where} denied ({code})", code=ErrorCode.ACCESS_DENIED)
    if status == 429 or status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}:
        return TransientError(f"S3 error on {where}: {code or status}", code=ErrorCode.FETCH_FAILED)
    return PermanentError(f"S3 error on {where}: {code or status}", code=ErrorCode.FETCH_FAILED)


def _check_key(where: str, key: str) -> None:
    if any(segment in {".", ".."} for segment in key.split("/")):
        # Legal in S3, but a store or proxy that normalises paths would serve another object — with path-style
        # addressing even one in another bucket (s3://allowed/../other/key), past the API's bucket allowlist.
        raise PermanentError(f"{where[:200]} has a '.' or '..' path segment", code=ErrorCode.INVALID_SOURCE)


class S3Fetcher:
    """Reads whole objects (or one byte range of one), refusing more than ``max_bytes`` before downloading."""

    def __init__(self, client: Any, *, max_bytes: int) -> None:
        self._client = client
        self._max_bytes = max_bytes

    def fetch(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        where = f"s3://{bucket}/{key}"
        _check_key(where, key)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        try:
            response = self._client.get_object(**params)
            size = int(response.get("ContentLength") or 0)
            body = response["Body"]
            if size > self._max_bytes:
                body.close()
                raise PermanentError(
                    f"{where} is {size:,} bytes; the limit is {self._max_bytes:,}", code=ErrorCode.TOO_LARGE
                )
            data: bytes = body.read(self._max_bytes + 1)
            body.close()
        except ClientError as exc:
            raise map_client_error(exc, where) from None
        except _CREDENTIAL_ERRORS as exc:
            raise WorkerFault(f"S3 credentials of this worker are unusable: {exc}", cause="s3_credentials") from None
        except BotoCoreError as exc:
            raise TransientError(f"S3 unreachable for {where}: {exc}", code=ErrorCode.FETCH_FAILED) from None
        if len(data) > self._max_bytes:
            raise PermanentError(f"{where} exceeds the {self._max_bytes:,}-byte limit", code=ErrorCode.TOO_LARGE)
        return data

    def fetch_range(
        self,
        bucket: str,
        key: str,
        offset: int,
        length: int,
        *,
        version_id: str | None = None,
        etag: str | None = None,
        what: str = "",
    ) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (a tar member's data) with one Range GET.

        With ``etag`` the read is conditional (``If-Match``): a shard rewritten since it was indexed fails as
        ``invalid_source`` instead of yielding bytes from another layout. Fewer bytes than asked mean the shard
        ends inside the member: ``truncated_image``.
        """
        where = f"s3://{bucket}/{key}" + (f"#{what}" if what else "")
        _check_key(where, key)
        if length > self._max_bytes:
            raise PermanentError(
                f"{where} is {length:,} bytes; the limit is {self._max_bytes:,}", code=ErrorCode.TOO_LARGE
            )
        if length == 0:
            return b""
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={offset}-{offset + length - 1}"}
        if version_id:
            params["VersionId"] = version_id
        if etag:
            params["IfMatch"] = etag if etag.startswith('"') else f'"{etag}"'
        try:
            body = self._client.get_object(**params)["Body"]
            data: bytes = body.read(length + 1)
            body.close()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _PRECONDITION_CODES:
                raise PermanentError(
                    f"{where}: the shard changed since it was indexed (ETag differs)", code=ErrorCode.INVALID_SOURCE
                ) from None
            if code in _TOO_LARGE_CODES:  # InvalidRange: the member starts past the end of the shard
                raise PermanentError(
                    f"{where}: the shard ends before this member", code=ErrorCode.TRUNCATED_IMAGE
                ) from None
            raise map_client_error(exc, where) from None
        except BotoCoreError as exc:
            raise TransientError(f"S3 unreachable for {where}: {exc}", code=ErrorCode.FETCH_FAILED) from None
        if len(data) != length:
            raise PermanentError(
                f"{where}: the shard ends {length - len(data):,} bytes into this member", code=ErrorCode.TRUNCATED_IMAGE
            )
        return data
