"""Where a backfill's results go: ``s3://bucket/prefix`` per backfill id (registered by the backfill's
``--results``), else ``GUARDQ_RESULTS_URI``; objects land under ``<prefix>/<backfill id>/``.
"""

from __future__ import annotations

import redis

from schemas.errors import ErrorCode, GuardqError, PermanentError
from schemas.keys import VERDICT_STREAM
from schemas.s3url import parse_s3_url
from schemas.settings import Settings
from worker.delivery.keys import RESULTS_GROUP, RESULTS_TARGETS


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (prefix without slashes at the ends)."""
    try:
        bucket, prefix = parse_s3_url(uri)
    except GuardqError as exc:
        raise PermanentError(f"results location: {exc}", code=ErrorCode.INVALID_SOURCE) from None
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
    ensure_results_group(client)
    client.hset(RESULTS_TARGETS, backfill_id, uri.rstrip("/"))


def ensure_results_group(client: redis.Redis[bytes]) -> None:
    """The sink's consumer group, created at the stream's end if missing (events from now on reach the sink)."""
    try:
        client.xgroup_create(VERDICT_STREAM, RESULTS_GROUP, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def results_uri(client: redis.Redis[bytes], settings: Settings, backfill_id: str) -> str | None:
    raw = client.hget(RESULTS_TARGETS, backfill_id)
    return raw.decode() if raw else settings.results_uri
