"""Frames of an animated GIF, WebP or APNG, decoded one at a time with Pillow and downscaled at once.

Limits are checked before the first pixel is decoded: the canvas (``GUARDQ_MAX_IMAGE_PIXELS``), the frame count
(``GUARDQ_MAX_FRAMES``; GIF frames counted by a bounded block walk, APNG and WebP from their headers) and canvas x
frames (``GUARDQ_MAX_TOTAL_PIXELS``, since every frame of an animation must be decoded to composite the next).
The running time (``GUARDQ_MAX_DURATION_S``) is summed from the frame durations while decoding. A frame that
cannot be decoded fails the whole job (``truncated_image``): moderating only the frames before it would let
whatever follows through.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from schemas.errors import ErrorCode, PermanentError
from worker.frames import FrameLimits
from worker.image import _load, _open, _to_rgb
from worker.media import gif_frame_count


@dataclass(frozen=True)
class DecodedFrame:
    """One frame in presentation order, converted to RGB and shrunk to the model's input size."""

    index: int
    time_s: float | None
    image: Image.Image


@dataclass(frozen=True)
class AnimationInfo:
    format: str
    width: int
    height: int
    frames: int


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """A new image whose longer side is at most ``max_side`` (never the decoder's own buffer)."""
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return image.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


class Animation:
    """An opened animation whose limits have been checked; iterate :meth:`frames` to decode it."""

    def __init__(self, data: bytes, limits: FrameLimits) -> None:
        self._image = _open(data, limits.max_pixels)
        self._limits = limits
        fmt = self._image.format or "unknown"
        width, height = self._image.size
        what = f"this {fmt} animation"
        limits.check_canvas(width, height, what)
        if fmt == "GIF":
            count = gif_frame_count(data, limit=limits.max_frames)
        else:
            count = int(getattr(self._image, "n_frames", 1))
        limits.check_count(count, what)
        self.info = AnimationInfo(fmt, width, height, count)
        self.elapsed_s: float | None = None  # running time, known once every frame has been decoded
        self.decoded: int | None = None  # frames the decoder gave, known once every frame has been decoded

    def frames(self, *, max_side: int, first_only: bool = False) -> Iterator[DecodedFrame]:
        """Each frame in turn; ``first_only`` stops after frame 0 (and skips the canvas x frames check)."""
        info, limits, image = self.info, self._limits, self._image
        what = f"this {info.format} animation"
        if not first_only:
            limits.check_total(info.width, info.height, info.frames, what)
        elapsed_ms = 0.0
        self.elapsed_s = self.decoded = None
        index = 0
        # Until the decoder itself runs out: the count above only decides early failures, never what is decoded.
        for index in range(1) if first_only else itertools.count():
            limits.check_count(index + 1, what)
            limits.check_total(info.width, info.height, index + 1, what)
            try:
                image.seek(index)
            except EOFError:
                if index == 0:
                    raise PermanentError(f"{what} has no frames", code=ErrorCode.NOT_AN_IMAGE) from None
                break
            except (OSError, SyntaxError, ValueError) as exc:
                raise PermanentError(
                    f"frame {index} of {what} cannot be decoded: {exc}", code=ErrorCode.TRUNCATED_IMAGE
                ) from None
            _load(image)
            yield DecodedFrame(index, round(elapsed_ms / 1000, 3), shrink(_to_rgb(image), max_side))
            duration = image.info.get("duration", 0)
            elapsed_ms += float(duration) if isinstance(duration, int | float) else 0.0
            limits.check_duration(elapsed_ms / 1000, what)
        if not first_only:
            self.elapsed_s, self.decoded = round(elapsed_ms / 1000, 3), index
