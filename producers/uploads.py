"""Write uploaded bytes to the upload store (a local folder or an S3 bucket); jobs then reference ``upload://``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from producers.s3client import make_s3_client
from schemas.job import ImageRef
from schemas.settings import Settings
from schemas.uploads import locate_upload, upload_key

_EXTENSIONS = {
    b"\xff\xd8\xff": "jpg",
    b"\x89PNG": "png",
    b"GIF8": "gif",
    b"BM": "bmp",
}


# ISO-BMFF brands of still images (HEIF/AVIF), which guardq does not take; any other ``ftyp`` is a video.
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"avif", b"avis"}


def guess_extension(data: bytes, fallback: str = "bin") -> str:
    """The extension of an image or video guardq moderates, from its first 12 bytes; ``fallback`` otherwise."""
    for magic, ext in _EXTENSIONS.items():
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and len(data) >= 12 and data[8:12] not in _IMAGE_BRANDS:
        return "mov" if data[8:12] == b"qt  " else "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska (WebM is one)
        return "webm"
    return fallback


class UploadStore:
    """Content-addressed store: the same bytes always get the same ``upload://<sha256>.<ext>`` key."""

    def __init__(self, settings: Settings, *, s3_client: Any | None = None) -> None:
        self._settings = settings
        self._s3 = s3_client

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = make_s3_client(self._settings)
        return self._s3

    def staging_dir(self) -> Path:
        """Where to spool an incoming upload: inside a local store (so the final rename is atomic), else tmp."""
        probe = locate_upload(self._settings.upload_store, upload_key("0" * 64, "bin"))
        folder = probe.path.parent if probe.path is not None else Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def put_file(self, path: Path, *, sha256: str, extension: str, size: int) -> ImageRef:
        """Move a spooled file (whose sha256 the caller computed while writing it) into the store."""
        key = upload_key(sha256, extension)
        location = locate_upload(self._settings.upload_store, key)
        try:
            if location.path is not None:
                if not location.path.exists():
                    os.replace(path, location.path)
            else:
                self._client().upload_file(str(path), location.bucket, location.key)
        finally:
            path.unlink(missing_ok=True)
        return ImageRef(uri=f"upload://{key}", size=size)

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
