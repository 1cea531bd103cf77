"""``POST /v1/uploads`` through real HTTP: bytes land in the upload store (never Redis) and a real worker moderates
them (short clips too); oversize uploads get 413 while streaming, non-images 415, malformed forms 4xx, and retries
replay."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from producers.api.auth import ApiKeyStore
from schemas.settings import Settings
from tests import images, motion
from tests.conftest import BUCKET, Runner
from tests.producers.conftest import ApiServer, bearer
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def token(keys: ApiKeyStore) -> str:
    return keys.create(f"up-{uuid.uuid4().hex[:8]}")[1]


def store_dir(settings: Settings) -> Path:
    return Path(settings.upload_store.removeprefix("file://"))


def spooled(settings: Settings) -> list[Path]:
    """Half-received uploads left behind (there must never be any)."""
    return list(store_dir(settings).glob(".incoming-*"))


def test_an_uploaded_image_is_stored_by_content_and_moderated_by_the_worker(
    api: ApiServer, token: str, runner: Runner, api_settings: Settings
) -> None:
    data = images.solid((10, 200, 10), (320, 240), "PNG")
    digest = hashlib.sha256(data).hexdigest()
    response = httpx.post(
        f"{api.url}/v1/uploads",
        files={"file": ("photo.png", data, "application/octet-stream")},
        data={"metadata": '{"album": "summer"}'},
        headers=bearer(token),
    )

    assert 202 == response.status_code, response.text
    accepted = response.json()
    assert f"upload://{digest}.png" == accepted["image"]
    assert data == (store_dir(api_settings) / f"{digest}.png").read_bytes()
    event = next(wait_for(runner.queue.redis, [accepted["job_id"]], after="0-0", timeout_s=30))
    assert event.completed
    assert (digest, 320, {"album": "summer"}) == (event.data.image.sha256, event.data.image.width, event.data.metadata)
    assert [] == spooled(api_settings)


@pytest.mark.parametrize("extra", [40_000, 400_000], ids=["cut-while-streaming", "refused-by-content-length"])
def test_an_upload_over_the_size_cap_gets_413_and_leaves_nothing_behind(
    api: ApiServer, token: str, api_settings: Settings, extra: int
) -> None:
    too_big = images.solid() + bytes(api_settings.api_max_upload_bytes + extra)  # a JPEG start, then too much

    response = httpx.post(f"{api.url}/v1/uploads", files={"file": ("big.jpg", too_big)}, headers=bearer(token))

    assert (413, "payload_too_large") == (response.status_code, response.json()["error"]["code"])
    assert [] == spooled(api_settings)
    assert not (store_dir(api_settings) / f"{hashlib.sha256(too_big).hexdigest()}.jpg").exists()


def test_an_oversize_upload_without_content_length_is_cut_off_while_streaming(
    api: ApiServer, token: str, api_settings: Settings
) -> None:
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'.encode()

    def chunked() -> Any:  # a generator body: httpx sends it chunked, with no Content-Length
        yield head + b"\xff\xd8\xff\xe0" + b"\0" * 8
        for _ in range(20):
            yield b"\0" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{api.url}/v1/uploads",
        content=chunked(),
        headers={**bearer(token), "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert (413, "payload_too_large") == (response.status_code, response.json()["error"]["code"])
    assert [] == spooled(api_settings)


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (b"%PDF-1.7 not an image at all", "image/jpeg"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (b"GIF", "image/gif"),
    ],
    ids=["pdf-claiming-jpeg", "svg", "three-bytes"],
)
def test_a_file_that_is_not_a_supported_image_gets_415_whatever_its_declared_type(
    api: ApiServer, token: str, payload: bytes, content_type: str, api_settings: Settings
) -> None:
    response = httpx.post(f"{api.url}/v1/uploads", files={"file": ("x", payload, content_type)}, headers=bearer(token))
    assert (415, "unsupported_media_type") == (response.status_code, response.json()["error"]["code"])
    assert [] == spooled(api_settings)


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({"policy": (None, "default")}, None, 422, "invalid_request"),
        ({"file": ("empty.jpg", b"")}, None, 422, "invalid_request"),
        ({"file": ("a.jpg", images.solid())}, {"colour": "red"}, 422, "invalid_request"),
        ({"file": ("a.jpg", images.solid())}, {"metadata": "[1, 2]"}, 422, "invalid_request"),
        ({"file": ("a.jpg", images.solid())}, {"policy": "never-stored"}, 422, "policy_unknown"),
        ({"file": ("a.jpg", images.solid())}, {"model": "nope"}, 422, "model_unknown"),
    ],
    ids=["no-file", "empty-file", "unknown-field", "metadata-not-object", "unknown-policy", "unknown-model"],
)
def test_a_malformed_upload_form_gets_a_precise_error(
    api: ApiServer, token: str, files: Any, data: Any, status: int, code: str, api_settings: Settings
) -> None:
    response = httpx.post(f"{api.url}/v1/uploads", files=files, data=data, headers=bearer(token))
    assert (status, code) == (response.status_code, response.json()["error"]["code"]), response.text
    assert [] == spooled(api_settings)


def test_a_non_multipart_body_gets_415(api: ApiServer, token: str) -> None:
    response = httpx.post(f"{api.url}/v1/uploads", json={"file": "x"}, headers=bearer(token))
    assert (415, "unsupported_media_type") == (response.status_code, response.json()["error"]["code"])


def test_a_retried_upload_with_the_same_idempotency_key_gets_the_same_job(api: ApiServer, token: str) -> None:
    data = images.solid((1, 2, 3))
    headers = {**bearer(token), "Idempotency-Key": str(uuid.uuid4())}
    first = httpx.post(f"{api.url}/v1/uploads", files={"file": ("a.jpg", data)}, headers=headers)
    again = httpx.post(f"{api.url}/v1/uploads", files={"file": ("a.jpg", data)}, headers=headers)
    other = httpx.post(f"{api.url}/v1/uploads", files={"file": ("b.jpg", images.solid((9, 9, 9)))}, headers=headers)
    assert (202, 202, first.json()["job_id"]) == (first.status_code, again.status_code, again.json()["job_id"])
    assert (422, "idempotency_key_reused") == (other.status_code, other.json()["error"]["code"])


def test_an_s3_upload_store_receives_the_spooled_file_under_its_content_key(
    settings: Settings, s3_client: Any, tmp_path: Path
) -> None:
    from producers.uploads import UploadStore

    store = UploadStore(settings.model_copy(update={"upload_store": f"s3://{BUCKET}/uploads"}), s3_client=s3_client)
    data = images.solid((5, 6, 7))
    digest = hashlib.sha256(data).hexdigest()
    spool = tmp_path / ".incoming-x"
    spool.write_bytes(data)

    ref = store.put_file(spool, sha256=digest, extension="jpg", size=len(data))

    assert f"upload://{digest}.jpg" == ref.uri
    assert data == s3_client.get_object(Bucket=BUCKET, Key=f"uploads/{digest}.jpg")["Body"].read()
    assert not spool.exists()


def test_an_uploaded_clip_is_stored_by_content_and_moderated_frame_by_frame(
    api: ApiServer, token: str, runner: Runner, api_settings: Settings
) -> None:
    data = motion.clip(30, unsafe_at={17})
    digest = hashlib.sha256(data).hexdigest()
    response = httpx.post(f"{api.url}/v1/uploads", files={"file": ("clip", data, "video/mp4")}, headers=bearer(token))
    assert 202 == response.status_code, response.text
    assert f"upload://{digest}.mp4" == response.json()["image"]
    event = next(wait_for(runner.queue.redis, [response.json()["job_id"]], after="0-0", timeout_s=30))
    assert event.data.verdict is not None and event.data.frames is not None
    assert ("Unsafe", "video", "MP4") == (event.data.verdict.rating, event.data.frames.source, event.data.image.format)
