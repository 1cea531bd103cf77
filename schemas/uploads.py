"""Layout of the upload store shared by the producer that writes an upload and the worker that reads it.

``GUARDQ_UPLOAD_STORE`` is ``file:///dir`` or ``s3://bucket[/prefix]``; an ``upload://<key>`` reference resolves to
``<dir>/<key>`` or ``s3://bucket/<prefix>/<key>``. Keys are content-addressed (``<sha256>.<ext>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from schemas.errors import ErrorCode, PermanentError

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True)
class UploadLocation:
    """Where one upload lives: a local ``path`` or an S3 ``bucket``/``key``."""

    path: Path | None = None
    bucket: str | None = None
    key: str | None = None


def upload_key(sha256: str, extension: str) -> str:
    return f"{sha256}.{extension.lower().lstrip('.')}"


def locate_upload(store_url: str, key: str) -> UploadLocation:
    """Resolve an upload key inside the store; refuse keys that could escape it."""
    if not _KEY.match(key) or ".." in key:
        raise PermanentError(f"invalid upload key {key[:80]!r}", code=ErrorCode.INVALID_SOURCE)
    parts = urlsplit(store_url)
    if parts.scheme == "file":
        return UploadLocation(path=Path(unquote(parts.path)) / key)
    prefix = parts.path.strip("/")
    return UploadLocation(bucket=parts.netloc, key=f"{prefix}/{key}" if prefix else key)
