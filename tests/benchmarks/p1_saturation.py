"""P1: does guardq keep an SGLang server saturated? Images/s end to end vs a direct asyncio client.

The server model: at most C requests are served at once (continuous batching), each for a fixed service time of
C / 40 s, so a saturated server does 40 images/s at every C (a rate the 2-core test box can drive; the question is
whether the client keeps C requests in flight, not how fast Python can serve HTTP); the rest queue. The direct client holds C requests in flight with the same request body guardq sends. guardq runs one
worker (threads pool, concurrency C) and is timed from the first enqueue to the last terminal event. A "naive"
Celery GPU worker (prefork, concurrency 1, prefetch 1) is measured on the same server for comparison.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from producers.broker import JobQueue
from schemas.models import get_model
from schemas.policy import Policy
from tests.benchmarks.harness import Figure, run_jobs, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, start_server, upload_jobs
from tests.services.procs import ROOT, wait_until
from worker.image import prepare_image
from worker.inference.base import InferenceRequest
from worker.inference.sglang import SGLangBackend

IDEAL_PER_S = 40.0  # C / service time: what the simulated GPU serves when saturated, kept within this box's means


async def direct_client(url: str, bodies: list[dict[str, object]], in_flight: int) -> float:
    """Images/s of a bare asyncio client keeping ``in_flight`` requests outstanding."""
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def drain() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(drain() for _ in range(in_flight)))
        return len(bodies) / (time.perf_counter() - start)


def request_bodies(settings_url: str, blobs: list[bytes]) -> list[dict[str, object]]:
    from schemas.settings import Settings

    spec = get_model("AIML-TUDA/LlavaGuard-7B")
    backend = SGLangBackend(Settings(sglang_url=settings_url), spec)
    text = Policy().text(spec.prompt_version)
    bodies = []
    for i, blob in enumerate(blobs):
        prepared = prepare_image(blob, max_side=spec.image_max_side, max_pixels=10**8)
        bodies.append(backend.build_body(InferenceRequest(prepared, text, rid=f"direct.{i}", want_score=True)))
    backend.close()
    return bodies


def naive_throughput(env: dict[str, str], workdir: Path, queue: JobQueue, blobs: list[bytes]) -> float:
    """Prefork, concurrency 1, prefetch 1: one request at a time per GPU worker."""
    log = workdir / "naive.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        "--prefetch-multiplier=1",
        "--queues=guardq.llavaguard-7b",
        "--hostname=naive@localhost",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: " ready." in log.read_text(errors="replace"), 60, "naive worker", proc)
        jobs = upload_jobs(settings_from(env), blobs)
        wall, seen = run_jobs(queue, jobs, timeout_s=120)
        assert seen == len(jobs)
        return len(jobs) / wall
    finally:
        proc.terminate()
        proc.wait(30)


def run(workdir: Path, sweep: tuple[int, ...] = (8, 32, 128), batches_per_c: int = 12) -> list[Figure]:
    figures: list[Figure] = []
    with services(workdir) as svc:
        for c in sweep:
            service_s = c / IDEAL_PER_S
            sim = start_server(max_running=c, latency_s=service_s)
            try:
                # guardq's sizing rule (docs/fleet.md): 1.25 x what the server runs at once, so a finished slot
                # never waits for the worker to fetch its next job from Redis.
                in_flight = math.ceil(c * 1.25)
                env = svc.env(sim.url, GUARDQ_WORKER_CONCURRENCY=str(in_flight), GUARDQ_SCORES="true")
                settings = settings_from(env)
                n = max(c * batches_per_c, 240)  # long enough that ramp-up and drain stay a small share
                blobs = distinct_jpegs(n, seed=c)
                direct = asyncio.run(direct_client(sim.url, request_bodies(sim.url, blobs), c))
                sim.reset()
                sim.configure(max_running=c, latency_s=service_s)
                queue = JobQueue(settings)
                with worker(env, workdir / f"c{c}", name=f"p1-c{c}"):
                    wall, seen = run_jobs(queue, upload_jobs(settings, distinct_jpegs(n, seed=c + 1000)), 300)
                assert seen == n, f"only {seen}/{n} events"
                ours = n / wall
                ideal = c / service_s
                figures.append(
                    Figure(
                        "P1",
                        f"guardq/direct, C={c}",
                        ours / direct,
                        "ratio",
                        target=0.95,
                        note=f"guardq {ours:.1f}/s ({in_flight} threads), direct {direct:.1f}/s, ideal {ideal:.0f}/s, n={n}",
                        extra={"guardq_per_s": ours, "direct_per_s": direct, "n": n},
                    )
                )
                figures.append(
                    Figure(
                        "P1",
                        f"guardq/saturated server capacity, C={c}",
                        ours / ideal,
                        "ratio",
                        note="the server's own ceiling; the direct client is itself CPU-bound here",
                    )
                )
                if c >= 32:
                    sim.reset()
                    sim.configure(max_running=c, latency_s=service_s)
                    naive = naive_throughput(env, workdir, queue, distinct_jpegs(6, seed=c + 2000))
                    figures.append(
                        Figure(
                            "P1",
                            f"guardq/naive prefork c1, C={c}",
                            ours / naive,
                            "x",
                            target=15.0,
                            note=f"naive {naive:.2f}/s",
                        )
                    )
                queue.close()
            finally:
                sim.stop()
    return figures
