"""Memory: peak RSS of one worker with 64 jobs in flight on 12 MP JPEGs, and RSS drift over a long run."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from producers.broker import JobQueue
from tests.benchmarks.harness import Figure, proc_rss_mb, run_jobs, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, photo_like_jpeg, start_server, upload_jobs


def variants(base: bytes, count: int) -> list[bytes]:
    """``count`` distinct 12 MP JPEGs made cheaply from one (a different patch each)."""
    image = Image.open(io.BytesIO(base))
    image.load()
    rng = random.Random(3)
    out = []
    for i in range(count):
        copy = image.copy()
        copy.paste((i % 256, rng.randrange(256), 90), (rng.randrange(3800), rng.randrange(2800), 4000, 3000))
        buf = io.BytesIO()
        copy.save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def run(workdir: Path, in_flight: int = 64, rounds: int = 6, per_round: int = 300) -> list[Figure]:
    with services(workdir) as svc:
        sim = start_server(max_running=None, latency_s=1.5)
        try:
            env = svc.env(sim.url, GUARDQ_WORKER_CONCURRENCY=str(in_flight))
            settings = settings_from(env)
            queue = JobQueue(settings)
            big = variants(photo_like_jpeg(), in_flight * 2)
            with worker(env, workdir, name="mem") as service:
                _, seen = run_jobs(queue, upload_jobs(settings, big), 300)
                assert seen == len(big)
                _rss, peak = proc_rss_mb(service.proc.pid)
                peak_in_flight = sim.peak_running
                sim.configure(latency_s=0.0)
                samples = []
                for r in range(rounds):
                    jobs = upload_jobs(settings, distinct_jpegs(per_round, seed=1000 + r))
                    run_jobs(queue, jobs, 300)
                    samples.append(proc_rss_mb(service.proc.pid)[0])
            queue.close()
        finally:
            sim.stop()
    growth = (samples[-1] - samples[1]) / samples[1] * 100
    return [
        Figure(
            "memory",
            f"peak RSS, {peak_in_flight} in flight on 12 MP JPEGs",
            peak,
            "MiB",
            target=1536,
            higher_is_better=False,
            note=f"{len(big)} jobs",
        ),
        Figure(
            "memory",
            f"RSS growth over {rounds * per_round} more jobs (round 2 -> {rounds})",
            growth,
            "%",
            target=10.0,
            higher_is_better=False,
            note=" -> ".join(f"{s:.0f}" for s in samples) + " MiB",
        ),
    ]
