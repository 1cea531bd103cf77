"""Benchmark workloads: distinct images in the upload store, jobs for them, an SGLang-like server."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from producers.uploads import UploadStore
from schemas.job import ModerationJob
from schemas.settings import Settings
from tests.sglang_server import SimulatedSGLang


def distinct_jpegs(count: int, size: tuple[int, int] = (96, 72), seed: int = 7) -> list[bytes]:
    """``count`` different small JPEGs (all rated Safe by the test server's default rules)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        image = Image.new("RGB", size, (40 + i % 50, 120 + (i // 50) % 50, 200))
        image.putpixel((rng.randrange(size[0]), rng.randrange(size[1])), (i % 256, (i * 7) % 256, (i * 13) % 256))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def photo_like_jpeg(size: tuple[int, int] = (4000, 3000), seed: int = 1, quality: int = 90) -> bytes:
    """A 12 MP JPEG with smooth regions, edges and mild noise (a typical photo's compressed size)."""
    rng = random.Random(seed)
    w, h = size
    base = Image.linear_gradient("L").resize(size).convert("RGB")
    tint = Image.new("RGB", size, (rng.randrange(60, 200), rng.randrange(60, 200), rng.randrange(60, 200)))
    image = Image.blend(base, tint, 0.5)
    noise = Image.effect_noise((w // 4, h // 4), 24).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    image = Image.blend(image, noise, 0.25)
    for _ in range(40):
        x, y = rng.randrange(w), rng.randrange(h)
        block = Image.new(
            "RGB",
            (rng.randrange(50, 600), rng.randrange(50, 600)),
            (rng.randrange(256), rng.randrange(256), rng.randrange(256)),
        )
        image.paste(block, (x, y))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def upload_jobs(settings: Settings, blobs: list[bytes], **job_fields: object) -> list[ModerationJob]:
    store = UploadStore(settings)
    return [ModerationJob(image=store.put(blob), **job_fields) for blob in blobs]  # type: ignore[arg-type]


def start_server(*, max_running: int | None, latency_s: float = 0.0) -> SimulatedSGLang:
    return SimulatedSGLang(max_running=max_running, latency_s=latency_s).start()


def clear_dir(path: Path) -> None:
    for child in path.glob("*"):
        if child.is_file():
            child.unlink()
