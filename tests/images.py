"""Image fixtures built in code: good images, broken ones and bombs."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def solid(
    color: tuple[int, int, int] = (40, 120, 200), size: tuple[int, int] = (64, 48), fmt: str = "JPEG", **save: object
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt, **save)
    return buf.getvalue()


def noisy_jpeg(size: tuple[int, int] = (4000, 3000), quality: int = 90) -> bytes:
    """A photo-like JPEG (gradients plus noise) that does not compress to nothing."""
    w, h = size
    small = Image.effect_noise((max(1, w // 8), max(1, h // 8)), 64).convert("RGB")
    image = small.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims huge dimensions (pixels never decoded if the guard works)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = noisy_jpeg((640, 480))
    return data[: len(data) // 2]


def exif_rotated_jpeg(orientation: int = 6, size: tuple[int, int] = (80, 40)) -> bytes:
    image = Image.new("RGB", size, (10, 200, 10))
    exif = image.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    return buf.getvalue()
