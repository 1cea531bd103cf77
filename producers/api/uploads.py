"""``POST /v1/uploads``: a multipart image upload streamed to the upload store, then queued.

The body is parsed as it arrives (``python-multipart``'s push parser), never held whole in memory and never put
in Redis: the file part is spooled to disk while its SHA-256 is computed, then moved into the content-addressed
upload store (``upload://<sha256>.<ext>``). The size cap (``GUARDQ_API_MAX_UPLOAD_BYTES``) is enforced as
bytes arrive (413, reading stops); the type is decided by the first bytes (JPEG, PNG, GIF, WebP, BMP; MP4, MOV,
WebM clips), not by the declared Content-Type (415). Form fields: ``file`` (required), ``policy``, ``model``,
``metadata`` (a JSON object), ``callback_url``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header

from producers.api.errors import ApiError
from producers.api.idempotency import fingerprint
from producers.api.moderations import Accepted, enqueue_once
from producers.api.services import (
    PrincipalDep,
    ServicesDep,
    job_factory,
)
from producers.uploads import guess_extension
from schemas.job import ImageRef

router = APIRouter(prefix="/v1", tags=["uploads"])

FIELDS = frozenset({"policy", "model", "metadata", "callback_url"})
MAX_FIELD_BYTES = 16_384
MAX_PARTS = 8
MAGIC_BYTES = 12


class _Receiver:
    """Callbacks for the push parser: collect small fields, spool and hash the one file part."""

    def __init__(self, spool_dir: Path, max_bytes: int) -> None:
        self.fields: dict[str, str] = {}
        self.file_path: Path | None = None
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.extension: str | None = None
        self._spool_dir = spool_dir
        self._max = max_bytes
        self._head = b""
        self._parts = 0
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._fd: int | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: setattr(self, "_header_field", self._header_field + d[s:e]),
            "on_header_value": lambda d, s, e: self._headers.__setitem__(
                self._header_field.lower(), self._headers.get(self._header_field.lower(), b"") + d[s:e]
            ),
            "on_header_end": lambda: setattr(self, "_header_field", b""),
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(422, "invalid_request", f"at most {MAX_PARTS} form parts")
        self._headers, self._header_field, self._value = {}, b"", bytearray()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = name == "file"
        if self._is_file and self.file_path is not None:
            raise ApiError(422, "invalid_request", "send exactly one file part named 'file'", field="file")
        if not self._is_file and name not in FIELDS:
            raise ApiError(422, "invalid_request", f"unknown form field {name!r}", field=name or None)
        self._name = name
        if self._is_file:
            self._fd, path = tempfile.mkstemp(dir=self._spool_dir, prefix=".incoming-")
            self.file_path = Path(path)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise ApiError(413, "payload_too_large", f"form field {self._name!r} exceeds {MAX_FIELD_BYTES} bytes")
            return
        self.size += len(chunk)
        if self.size > self._max:
            raise ApiError(413, "payload_too_large", f"the file exceeds the {self._max}-byte upload limit")
        if self.extension is None:
            self._head += chunk[: MAGIC_BYTES - len(self._head)]
            if len(self._head) >= MAGIC_BYTES:
                self._check_type()
        self.sha256.update(chunk)
        assert self._fd is not None
        os.write(self._fd, chunk)

    def _check_type(self) -> None:
        ext = guess_extension(self._head, fallback="")
        if not ext:
            raise ApiError(
                415,
                "unsupported_media_type",
                "the file is not a JPEG, PNG, GIF, WebP or BMP image, nor an MP4/MOV/WebM",
            )
        self.extension = ext

    def _part_end(self) -> None:
        if self._is_file:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self.extension is None and self.size:
                self._check_type()  # shorter than the magic window
        elif self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


async def _receive(request: Request, receiver: _Receiver, max_bytes: int) -> None:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with a 'file' part")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise ApiError(413, "payload_too_large", f"the upload exceeds the {max_bytes}-byte limit")
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())  # type: ignore[arg-type]
    async for chunk in request.stream():
        parser.write(chunk)
    parser.finalize()


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "policy": {"type": "string", "description": "stored policy NAME[@VERSION]"},
                        "model": {"type": "string"},
                        "metadata": {"type": "string", "description": "a JSON object"},
                        "callback_url": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/uploads",
    status_code=202,
    response_model=Accepted,
    summary="Upload an image and queue it",
    openapi_extra=_OPENAPI_BODY,
)
async def upload(
    request: Request,
    who: PrincipalDep,
    svc: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    who.require("moderate")
    cap = svc.settings.api_max_upload_bytes
    receiver = _Receiver(svc.uploads.staging_dir(), cap)
    try:
        try:
            await _receive(request, receiver, cap)
        except ApiError:
            raise
        except Exception as exc:  # the multipart parser's own errors: a malformed body
            raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
        if receiver.file_path is None or receiver.size == 0:
            raise ApiError(422, "invalid_request", "a non-empty 'file' part is required", field="file")
        fields = receiver.fields
        try:
            metadata = json.loads(fields.get("metadata") or "{}")
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise ApiError(422, "invalid_request", "metadata must be a JSON object", field="metadata")
        digest, ext, size = receiver.sha256.hexdigest(), receiver.extension or "bin", receiver.size
        make_job = await run_in_threadpool(
            job_factory,
            svc,
            who,
            ImageRef(uri=f"upload://{digest}.{ext}", size=size),
            policy=fields.get("policy"),
            model=fields.get("model"),
            metadata=metadata,
            callback_url=fields.get("callback_url"),
            idempotency_key=idempotency_key,
        )
        print_ = fingerprint("POST", "/v1/uploads", {"sha256": digest, "fields": fields})
        spooled = receiver.file_path
        await run_in_threadpool(svc.uploads.put_file, spooled, sha256=digest, extension=ext, size=size)
        return await run_in_threadpool(enqueue_once, svc, request, who.tenant, idempotency_key, print_, make_job)
    finally:
        receiver.discard()
