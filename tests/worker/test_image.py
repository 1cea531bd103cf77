"""Image preparation: untrusted bytes in, a small upright RGB image out — or a precise permanent error."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from schemas.errors import PermanentError
from tests import images
from worker.image import prepare_image

LIMITS = {"max_side": 336, "max_pixels": 64_000_000}


def decoded(prepared_payload: bytes) -> Image.Image:
    return Image.open(io.BytesIO(prepared_payload))


def code_of(data: bytes, **limits: int) -> str:
    with pytest.raises(PermanentError) as info:
        prepare_image(data, **(LIMITS | limits))
    return str(info.value.code)


def test_a_12_megapixel_jpeg_is_downscaled_to_the_model_input_size() -> None:
    prepared = prepare_image(images.noisy_jpeg((4000, 3000)), **LIMITS)
    assert (4000, 3000) == (prepared.width, prepared.height)
    assert (336, 252) == decoded(prepared.payload).size
    assert "image/jpeg" == prepared.mime


def test_a_small_jpeg_is_passed_through_unchanged() -> None:
    data = images.solid(size=(200, 100))
    prepared = prepare_image(data, **LIMITS)
    assert data == prepared.payload
    assert prepared.data_uri() == "data:image/jpeg;base64," + base64.b64encode(data).decode()


def test_exif_orientation_is_applied_and_reported_upright() -> None:
    prepared = prepare_image(images.exif_rotated_jpeg(6, (80, 40)), **LIMITS)
    assert (40, 80) == (prepared.width, prepared.height)
    assert (40, 80) == decoded(prepared.payload).size


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "LA", "P", "RGBA", "L"])
def test_any_colour_mode_becomes_8_bit_rgb_or_grey(mode: str) -> None:
    buf = io.BytesIO()
    fmt = "JPEG" if mode in {"CMYK", "L"} else "PNG"
    Image.new(mode, (500, 400)).save(buf, fmt)
    prepared = prepare_image(buf.getvalue(), **LIMITS)
    assert decoded(prepared.payload).mode in {"RGB", "L"}


def test_only_the_first_frame_of_an_animation_is_used() -> None:
    frames = [Image.new("RGB", (50, 50), (i * 20 % 255, 0, 0)) for i in range(40)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    prepared = prepare_image(buf.getvalue(), **LIMITS)
    assert (50, 50) == decoded(prepared.payload).size
    assert "GIF" == prepared.source_format


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"just some text, named .jpg", "not_an_image"),
        (b"%PDF-1.7\n%\xe2\xe3", "not_an_image"),
        (b"<html><body>hi</body></html>", "not_an_image"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported_format"),
        (b"II*\x00" + b"\x00" * 64, "unsupported_format"),
        (images.truncated_jpeg(), "truncated_image"),
        (images.png_bomb(30000, 30000), "decompression_bomb"),
    ],
    ids=["empty", "text", "pdf", "html", "svg", "tiff", "truncated", "bomb"],
)
def test_bad_input_fails_with_its_own_code(data: bytes, code: str) -> None:
    assert code == code_of(data)


def test_the_pixel_limit_is_an_error_not_a_warning() -> None:
    assert "decompression_bomb" == code_of(images.solid(size=(1000, 1000)), max_pixels=999_999)


def test_truncated_png_is_reported_as_truncated() -> None:
    data = images.solid(size=(300, 300), fmt="PNG")
    noisy = io.BytesIO()
    Image.effect_noise((300, 300), 80).save(noisy, "PNG")
    assert "truncated_image" == code_of(noisy.getvalue()[: len(noisy.getvalue()) // 2])
    assert prepare_image(data, **LIMITS).payload == data


def test_the_sha256_identifies_the_original_bytes() -> None:
    data = images.noisy_jpeg((800, 600))
    import hashlib

    assert hashlib.sha256(data).hexdigest() == prepare_image(data, **LIMITS).sha256
