"""P2: worker CPU per image — S3 fetch, validate, downscale, encode, base64 — against a naive Pillow path.

Naive path (what a first version usually does): fetch, full decode, resize to the model size, PNG encode, base64.
Both run in this process on the same bytes from the same S3-compatible server; CPU time, not wall time.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image

from schemas.models import get_model
from tests import images
from tests.benchmarks.harness import Figure, services, settings_from
from tests.benchmarks.workload import photo_like_jpeg
from worker.image import prepare_image
from worker.sources.s3 import S3Fetcher, make_s3_client

BUCKET = "bench-images"


def naive_prepare(data: bytes, side: int) -> str:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def cpu_per_call(fn: Any, repeat: int) -> float:
    fn()  # warm caches and imports
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat * 1000


def corpus() -> dict[str, bytes]:
    png = io.BytesIO()
    small = Image.effect_noise((480, 270), 50).convert("RGB").resize((3840, 2160), Image.Resampling.BILINEAR)
    small.save(png, "PNG")
    return {
        "12MP JPEG (4000x3000)": photo_like_jpeg(),
        "12MP high-entropy JPEG": images.noisy_jpeg((4000, 3000), quality=92),
        "4K PNG (3840x2160)": png.getvalue(),
        "small JPEG (640x480)": images.noisy_jpeg((640, 480)),
    }


def run(workdir: Path, repeat: int = 15) -> list[Figure]:
    figures: list[Figure] = []
    side = get_model("AIML-TUDA/LlavaGuard-7B").image_max_side
    with services(workdir, s3=True) as svc:
        env = svc.env("http://127.0.0.1:9")
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        settings = settings_from(env)
        client = make_s3_client(settings)
        client.create_bucket(Bucket=BUCKET)
        fetcher = S3Fetcher(client, max_bytes=settings.max_image_bytes)
        for label, data in corpus().items():
            key = label.replace(" ", "_").replace("(", "").replace(")", "") + ".bin"
            client.put_object(Bucket=BUCKET, Key=key, Body=data)

            def guardq_path(key: str = key) -> str:
                blob = fetcher.fetch(BUCKET, key)
                return prepare_image(blob, max_side=side, max_pixels=settings.max_image_pixels).data_uri()

            def naive_path(key: str = key) -> str:
                return naive_prepare(fetcher.fetch(BUCKET, key), side)

            fast = cpu_per_call(guardq_path, repeat)
            slow = cpu_per_call(naive_path, max(3, repeat // 3))
            target = 15.0 if label.startswith("12MP") else None
            figures.append(
                Figure(
                    "P2",
                    f"CPU/image {label}",
                    fast,
                    "ms",
                    target=target,
                    higher_is_better=False,
                    note=f"{len(data) / 1e6:.1f} MB input",
                    extra={"naive_ms": slow},
                )
            )
            figures.append(
                Figure(
                    "P2",
                    f"speedup vs naive, {label}",
                    slow / fast,
                    "x",
                    target=10.0 if label.startswith("12MP") else None,
                    note=f"naive {slow:.1f} ms",
                )
            )
    return figures
