"""Animations and clips built in code: harmless moving frames with unsafe frames spliced in where a test wants.

A *harmless* frame is a blue background with a white square that moves a little each frame (so frames are
distinct, as in a real animation); an *unsafe* frame is the red the SGLang test server rates Unsafe (O2). The
test server decides per image from its mean colour, and each frame reaches it as an image request of its own.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from fractions import Fraction

import av
from PIL import Image, ImageDraw

SAFE_RGB = (40, 120, 200)
UNSAFE_RGB = (220, 30, 30)


def frame(i: int, size: tuple[int, int] = (160, 120), unsafe: bool = False) -> Image.Image:
    """Frame ``i`` of the harmless motion (or the unsafe red, ``unsafe=True``)."""
    if unsafe:
        return Image.new("RGB", size, UNSAFE_RGB)
    image = Image.new("RGB", size, SAFE_RGB)
    w, h = size
    side = max(4, min(w, h) // 5)
    x = (i * 3) % max(1, w - side)
    y = (i * 2) % max(1, h - side)
    ImageDraw.Draw(image).rectangle((x, y, x + side, y + side), fill=(240, 240, 240))
    return image


def frames(count: int, unsafe_at: Collection[int] = (), size: tuple[int, int] = (160, 120)) -> list[Image.Image]:
    return [frame(i, size, unsafe=i in unsafe_at) for i in range(count)]


def animation(
    count: int,
    unsafe_at: Collection[int] = (),
    fmt: str = "GIF",
    size: tuple[int, int] = (160, 120),
    duration_ms: int = 80,
) -> bytes:
    """An animated GIF, WEBP or PNG (APNG) of ``count`` frames."""
    images = frames(count, unsafe_at, size)
    buf = io.BytesIO()
    options: dict[str, object] = {"save_all": True, "append_images": images[1:], "duration": duration_ms, "loop": 0}
    if fmt == "WEBP":
        options["lossless"] = True
    images[0].save(buf, fmt, **options)
    return buf.getvalue()


def clip(
    count: int,
    unsafe_at: Collection[int] = (),
    *,
    container: str = "mp4",
    codec: str = "libx264",
    fps: int | Fraction = 25,
    size: tuple[int, int] = (160, 120),
    options: dict[str, str] | None = None,
) -> bytes:
    """A video of ``count`` frames (mp4/mov with H.264, webm with VP8/VP9, ...)."""
    buf = io.BytesIO()
    # bitexact: no random segment ids or dates, so the same call gives the same bytes (committed fixtures)
    with av.open(buf, "w", format=container, container_options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if options:
            stream.options = options
        for i in range(count):
            picture = av.VideoFrame.from_image(frame(i, size, unsafe=i in unsafe_at))
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
