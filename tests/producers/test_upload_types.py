"""The upload store names a file by what its first bytes say it is: images, and the video containers guardq reads."""

from __future__ import annotations

import pytest

from producers.uploads import guess_extension
from tests import images, motion


@pytest.mark.parametrize(
    ("data", "extension"),
    [
        (images.solid(), "jpg"),
        (motion.animation(3, fmt="WEBP"), "webp"),
        (motion.clip(3), "mp4"),
        (motion.clip(3, container="mov"), "mov"),
        (motion.clip(3, container="webm", codec="libvpx"), "webm"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", ""),
        (b"%PDF-1.7", ""),
    ],
    ids=["jpeg", "webp", "mp4", "mov", "webm", "heic-refused", "pdf-refused"],
)
def test_the_extension_comes_from_the_first_twelve_bytes(data: bytes, extension: str) -> None:
    assert extension == guess_extension(data[:12], fallback="")
