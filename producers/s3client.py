"""The producers' boto3 S3 client (listing, inventory manifests, the upload store, backfill results): one per
process. ``s3://bucket/prefix`` locations are read by ``schemas.s3url``."""

from __future__ import annotations

from typing import Any

from schemas.settings import Settings


def make_s3_client(settings: Settings, *, max_pool: int = 16) -> Any:
    """A boto3 S3 client for ``GUARDQ_S3_ENDPOINT_URL`` (any S3-compatible store; standard ``AWS_*`` credentials).

    Retries use botocore's ``standard`` mode (exponential backoff with jitter on throttling and 5xx), which is what
    a listing of millions of keys needs when S3 answers ``503 Slow Down``.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region,
        retries={"mode": "standard", "max_attempts": 8},
        connect_timeout=settings.fetch_connect_timeout_s,
        read_timeout=settings.fetch_timeout_s,
        max_pool_connections=max_pool,
        s3={"addressing_style": settings.s3_addressing_style},
    )
    return boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
