"""P5: animated images and videos — worker CPU to sample a file, frames decoded, model calls, resident memory.

Each file is sampled the way the worker does it (``worker.multiframe.sample_frames``: decode frame by frame,
downscale, deduplicate, keep the budget's JPEGs) in this process; no model is called, the figure "model calls"
is the number of frames that would be sent. Memory is the growth of the peak resident set of a fresh process
that samples one file (after its imports and after reading the file's bytes), so nothing measured before counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from schemas.models import get_model
from schemas.settings import Settings
from tests import motion
from tests.benchmarks.harness import Figure
from worker.media import sniff
from worker.multiframe import sample_frames


def corpus() -> dict[str, bytes]:
    fast = {"preset": "ultrafast", "threads": "1"}
    return {
        "GIF 240 frames 480x360": motion.animation(240, {133}, size=(480, 360)),
        "WebP 60 frames 480x360": motion.animation(60, {41}, fmt="WEBP", size=(480, 360)),
        "MP4 30 s 720p (900 frames, decoded in full)": motion.clip(900, {700}, size=(1280, 720), fps=30, options=fast),
        "MP4 60 s 720p (1800 frames, keyframes + spread)": motion.clip(
            1800, set(range(1200, 1260)), size=(1280, 720), fps=30, options=fast
        ),
    }


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(path: Path) -> dict[str, float]:
    """Sample one file in this (fresh) process: CPU, counts and the growth of the peak resident set."""
    settings = Settings()
    model = get_model(settings.model)
    data = path.read_bytes()
    media = sniff(data)
    before = peak_rss_mb()
    started = time.process_time()
    sampled = sample_frames(data, media, settings, model, first_only=False)
    cpu_ms = (time.process_time() - started) * 1000
    counts = sampled.sampler.counts()
    return {
        "cpu_ms": cpu_ms,
        "rss_growth_mb": peak_rss_mb() - before,
        "frames": float(sampled.total or 0),
        "sampled": counts.sampled,
        "moderated": counts.moderated,
        "duplicates": counts.duplicates,
        "over_budget": counts.over_budget,
    }


def run(workdir: Path) -> list[Figure]:
    budget = Settings().frame_budget
    figures: list[Figure] = []
    for number, (label, data) in enumerate(corpus().items()):
        path = workdir / f"file-{number}"
        path.write_bytes(data)
        out = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.p5_frames", str(path)], capture_output=True, text=True, check=True
        )
        m = json.loads(out.stdout.strip().splitlines()[-1])
        note = f"{len(data) / 1e6:.2f} MB, {m['frames']:.0f} frames, {m['sampled']} decoded"
        figures += [
            Figure("P5", f"CPU to sample {label}", m["cpu_ms"], "ms", higher_is_better=False, note=note),
            Figure(
                "P5",
                f"model calls, {label}",
                m["moderated"],
                "calls",
                target=budget,
                higher_is_better=False,
                note=f"{m['duplicates']} duplicates, {m['over_budget']} over budget",
            ),
            Figure("P5", f"peak RSS growth, {label}", m["rss_growth_mb"], "MiB", target=100.0, higher_is_better=False),
        ]
    return figures


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]))))
