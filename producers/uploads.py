"""Write uploaded bytes to the upload store (a local folder or an S3 bucket); jobs then reference ``upload://``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

from schemas.job import ImageRef
from schemas.settings import Settings
from schemas.uploads import locate_upload, upload_key

_EXTENSIONS = {
    b"\xff\xd8\xff": "jpg",
    b"\x89PNG": "png",
    b"GIF8": "gif",
    b"BM": "bmp",
}


def guess_extension(data: bytes, fallback: str = "bin") -> str:
    for magic, ext in _EXTENSIONS.items():
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return fallback


class UploadStore:
    """Content-addressed store: the same bytes always get the same ``upload://<sha256>.<ext>`` key."""

    def __init__(self, settings: Settings, *, s3_client: Any | None = None) -> None:
        self._settings = settings
        self._s3 = s3_client

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            self._s3 = boto3.session.Session().client(
                "s3",
                endpoint_url=self._settings.s3_endpoint_url,
                config=Config(
                    region_name=self._settings.s3_region, s3={"addressing_style": self._settings.s3_addressing_style}
                ),
            )
        return self._s3

    def put(self, data: bytes, *, extension: str | None = None) -> ImageRef:
        key = upload_key(hashlib.sha256(data).hexdigest(), extension or guess_extension(data))
        location = locate_upload(self._settings.upload_store, key)
        if location.path is not None:
            location.path.parent.mkdir(parents=True, exist_ok=True)
            if not location.path.exists():
                fd, tmp = tempfile.mkstemp(dir=location.path.parent, prefix=".upload-")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, location.path)
        else:
            self._client().put_object(Bucket=location.bucket, Key=location.key, Body=data)
        return ImageRef(uri=f"upload://{key}", size=len(data))
