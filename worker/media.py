"""Tell still images, animated images and videos apart from their first bytes, before anything is decoded.

Only containers are looked at (GIF blocks, PNG chunks, the WebP header, ISO-BMFF and EBML signatures), so the
common case (a JPEG) costs a few byte comparisons. A GIF, PNG or WebP that looks still is also asked of Pillow
(headers only), which is what decodes it, so no file Pillow would animate passes as a still image. A file is
*animated* when it holds two frames or more; a one-frame GIF or an APNG of one frame is a still image.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image


class MediaKind(StrEnum):
    STILL = "still"
    ANIMATION = "animation"
    VIDEO = "video"


@dataclass(frozen=True)
class Media:
    kind: MediaKind
    format: str  # GIF, PNG, WEBP for animations; MP4, MOV, WEBM, MKV for videos; "" for still images


STILL = Media(MediaKind.STILL, "")
# ISO-BMFF brands that are still images (HEIF/AVIF); they stay on the image path, which names them unsupported.
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"avif", b"avis"}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_EBML = b"\x1a\x45\xdf\xa3"


def sniff(data: bytes) -> Media:
    """What kind of media ``data`` is, judged from its container structure only."""
    head = data[:64]
    if head.startswith((b"GIF87a", b"GIF89a")):
        animated = gif_frame_count(data, limit=2) >= 2
        return Media(MediaKind.ANIMATION, "GIF") if animated or _pillow_animated(data) else STILL
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        animated = apng_frame_count(data) >= 2
        return Media(MediaKind.ANIMATION, "PNG") if animated or _pillow_animated(data) else STILL
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        animated = head[12:16] == b"VP8X" and len(head) > 20 and bool(head[20] & 0x02)
        return Media(MediaKind.ANIMATION, "WEBP") if animated or _pillow_animated(data) else STILL
    video = video_container(head)
    return Media(MediaKind.VIDEO, video) if video else STILL


def _pillow_animated(data: bytes) -> bool:
    """A second opinion from the decoder itself, so a file it would animate is never taken for a still image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # unreadable here: the image path names the problem
        return False


def video_container(head: bytes) -> str | None:
    """MP4/MOV (ISO-BMFF, QuickTime) or WEBM/MKV (Matroska) from the first bytes; None for anything else."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return "MOV" if brand == b"qt  " else "MP4"
    if head[4:8] in _QUICKTIME_ATOMS and struct.unpack(">I", head[:4])[0] >= 8:
        return "MOV"
    if head.startswith(_EBML):
        return "WEBM" if b"webm" in head else "MKV"
    return None


def gif_frame_count(data: bytes, *, limit: int) -> int:
    """Image descriptors in a GIF, counted by walking its blocks, stopping once ``limit`` is passed.

    Pillow's ``n_frames`` walks every frame in Python with no bound; a 50 MB GIF of one-pixel frames holds
    millions. This walk skips sub-blocks by their length bytes and stops at ``limit + 1``.
    """
    if len(data) < 13:
        return 0
    packed = data[10]
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames = 0
    size = len(data)
    while pos < size and frames <= limit:
        marker = data[pos]
        if marker == 0x3B:  # trailer
            break
        if marker == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif marker == 0x2C:  # image descriptor: 9 bytes, optional local colour table, LZW size, sub-blocks
            if pos + 10 > size:
                break
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)
            frames += 1
        else:
            pos += 1  # a stray byte between blocks: Pillow skips it and reads on, and so must the count
    return frames


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            break
    return pos


def apng_frame_count(data: bytes) -> int:
    """Frames an APNG declares (its ``acTL`` chunk before the image data); 1 for a plain PNG."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"acTL" and length >= 8 and pos + 16 <= len(data):
            return int(struct.unpack(">I", data[pos + 8 : pos + 12])[0])
        if kind in {b"IDAT", b"IEND"}:
            break
        pos += 12 + length
    return 1
