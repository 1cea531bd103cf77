"""``s3://bucket/prefix`` locations (a backfill's source, a results location), read the same way everywhere."""

from __future__ import annotations

from urllib.parse import urlsplit

from schemas.errors import ConfigError


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → ``(bucket, prefix)``; the prefix may be empty (the whole bucket)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{url!r} is not an s3://bucket[/prefix] URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"{url!r}: an s3:// location takes no ?query or #fragment")
    return parts.netloc, url.split("://", 1)[1].partition("/")[2]
