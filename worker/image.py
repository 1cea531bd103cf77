"""Validate untrusted image bytes and shrink them to what the model's vision tower can use.

Cheap path first: the header is parsed before any pixel is decoded (size and format checks, bomb limit as an
error), JPEGs decode in draft mode (DCT scaling straight to about the target size), only the first frame of an
animation is used, and an image that needs no change is passed through as its original bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from schemas.errors import ErrorCode, PermanentError
from worker.decodebudget import DecodeBudget, decode_cost

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
PASSTHROUGH_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (EXIF 2.32, tag 0x0112).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Signatures of formats we recognise but do not decode, to tell "unsupported" from "not an image at all".
_KNOWN_UNSUPPORTED = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"SIMPLE  =", "FITS"),
    (b"8BPS", "PSD"),
)


@dataclass(frozen=True)
class PreparedImage:
    """Image bytes ready for the model, plus facts about the original."""

    sha256: str
    original_bytes: int
    source_format: str
    width: int
    height: int
    mime: str
    payload: bytes

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.payload).decode('ascii')}"


def _unsupported_name(data: bytes) -> str | None:
    head = data[:64]
    for magic, name in _KNOWN_UNSUPPORTED:
        if head.startswith(magic):
            return name
    if head[4:12] in {b"ftypheic", b"ftypheix", b"ftypavif", b"ftypmif1"}:
        return "HEIF/AVIF"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        return "SVG"
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise PermanentError("the object is empty (0 bytes)", code=ErrorCode.EMPTY_IMAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentError(f"decompression bomb refused: {exc}", code=ErrorCode.DECOMPRESSION_BOMB) from None
    except UnidentifiedImageError:
        name = _unsupported_name(data)
        if name:
            raise PermanentError(
                f"{name} images are not accepted; send one of {', '.join(ALLOWED_FORMATS)}",
                code=ErrorCode.UNSUPPORTED_FORMAT,
            ) from None
        raise PermanentError(
            f"not an image (first bytes {data[:8]!r}); accepted formats: {', '.join(ALLOWED_FORMATS)}",
            code=ErrorCode.NOT_AN_IMAGE,
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PermanentError(f"unreadable image header: {exc}", code=ErrorCode.NOT_AN_IMAGE) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise PermanentError(f"image has no pixels ({width}x{height})", code=ErrorCode.NOT_AN_IMAGE)
    if width * height > max_pixels:
        raise PermanentError(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
            code=ErrorCode.DECOMPRESSION_BOMB,
        )
    return image


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, EOFError, ValueError) as exc:
        text = str(exc).lower()
        if any(word in text for word in ("truncated", "broken", "eof", "end of", "incomplete", "premature")):
            raise PermanentError(f"image data is truncated: {exc}", code=ErrorCode.TRUNCATED_IMAGE) from None
        raise PermanentError(f"image data cannot be decoded: {exc}", code=ErrorCode.TRUNCATED_IMAGE) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any mode (palette, alpha, CMYK, 16-bit) to 8-bit RGB; transparency over white."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        high = 65535 if image.mode.startswith("I;16") or (image.getextrema()[1] or 0) > 255 else 255  # type: ignore[operator]
        image = image.convert("I").point(lambda v: v * (255 / high)).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def prepare_image(
    data: bytes,
    *,
    max_side: int,
    max_pixels: int,
    jpeg_quality: int = 90,
    sha256: str | None = None,
    budget: DecodeBudget | None = None,
) -> PreparedImage:
    """Validate ``data`` and return it shrunk so its longer side is at most ``max_side`` pixels.

    The pixels are decoded only once ``budget`` (the worker's decode memory budget) has room for them.
    """
    image = _open(data, max_pixels)
    source_format = image.format or "unknown"
    width, height = image.size
    needs_resize = max(width, height) > max_side
    if source_format == "JPEG" and needs_resize:
        # DCT scaling: decode at 1/2, 1/4 or 1/8 size, never below the requested box.
        scale = max_side / max(width, height)
        image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
    with budget.reserve(decode_cost(*image.size)) if budget is not None else nullcontext():
        return _decode_and_shrink(data, image, source_format, (width, height), max_side, jpeg_quality, sha256)


def _decode_and_shrink(
    data: bytes,
    image: Image.Image,
    source_format: str,
    size: tuple[int, int],
    max_side: int,
    jpeg_quality: int,
    sha256: str | None,
) -> PreparedImage:
    width, height = size
    needs_resize = max(width, height) > max_side
    _load(image)  # before getexif(): PNG reads EXIF chunks that follow the pixel data
    orientation = image.getexif().get(_ORIENTATION_TAG, 1) if source_format in {"JPEG", "PNG", "WEBP"} else 1
    orientation = orientation if orientation in _UPRIGHT else 1
    if orientation in {5, 6, 7, 8}:
        width, height = height, width  # report the upright size
    passthrough = (
        not needs_resize
        and orientation == 1
        and source_format in PASSTHROUGH_FORMATS
        and image.mode in {"RGB", "L"}
        and not getattr(image, "is_animated", False)
    )
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    if passthrough:
        return PreparedImage(sha256, len(data), source_format, width, height, PASSTHROUGH_FORMATS[source_format], data)
    rgb = _to_rgb(image)
    if needs_resize:
        # Antialiased bilinear: half the CPU of bicubic; the model processor does its own final resize anyway.
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if orientation != 1:
        rgb = rgb.transpose(_UPRIGHT[orientation])
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=jpeg_quality)
    return PreparedImage(sha256, len(data), source_format, width, height, "image/jpeg", out.getvalue())
