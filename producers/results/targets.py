"""Where a backfill's results go: ``s3://bucket/prefix`` per backfill id (registered by the backfill's
``--results``), else ``GUARDQ_RESULTS_URI``; objects land under ``<prefix>/<backfill id>/``.
"""

from __future__ import annotations

from typing import Any

import redis

from schemas.errors import ErrorCode, PermanentError
from schemas.keys import RESULTS_GROUP, RESULTS_TARGETS, VERDICT_STREAM
from schemas.settings import Settings


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (prefix without slashes at the ends)."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise PermanentError(f"results location {uri!r} is not s3://bucket[/prefix]", code=ErrorCode.INVALID_SOURCE)
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def object_prefix(uri: str, backfill_id: str) -> tuple[str, str]:
    """Bucket and key prefix (ending in ``/``) of a backfill's result objects."""
    bucket, prefix = split_s3_uri(uri)
    return bucket, f"{prefix}/{backfill_id}/" if prefix else f"{backfill_id}/"


def register_results(client: redis.Redis[bytes], backfill_id: str, uri: str) -> None:
    """Send backfill ``backfill_id``'s verdicts to ``uri``; call it before enqueueing the backfill's first job.

    Also creates the sink's consumer group if missing, so every event published from now on reaches the sink even
    if it is not running yet.
    """
    split_s3_uri(uri)
    try:
        client.xgroup_create(VERDICT_STREAM, RESULTS_GROUP, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    client.hset(RESULTS_TARGETS, backfill_id, uri.rstrip("/"))


def results_uri(client: redis.Redis[bytes], settings: Settings, backfill_id: str) -> str | None:
    raw = client.hget(RESULTS_TARGETS, backfill_id)
    return raw.decode() if raw else settings.results_uri


def make_s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the configured endpoint (standard ``AWS_*`` credentials)."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region,
        retries={"mode": "standard", "max_attempts": 5},
        s3={"addressing_style": settings.s3_addressing_style},
    )
    return boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
