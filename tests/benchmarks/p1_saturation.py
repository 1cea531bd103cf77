"""P1: does a default guardq worker keep an SGLang server saturated? Images/s end to end vs the best direct client.

The server model: at most C requests are served at once (continuous batching), the rest wait in its queue (reported
in ``/v1/loads`` like SGLang's), each taking C / 40 s on average, so a saturated server does 40 images/s at every C
(a rate the 2-core test box can drive; the question is whether the client keeps the server full, not how fast
Python serves HTTP). Service times are fixed, or prefill plus per-token decode plus jitter. The direct asyncio
client sends guardq's request bodies with C and 1.25 C in flight; the better of the two is the reference. guardq
runs one worker with **no concurrency set** (worker/inflight.py sizes it from the server's queue) and is timed from
the first enqueue to the last terminal event. One row compares a naive Celery GPU worker (prefork, concurrency 1).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from producers.broker import JobQueue
from schemas.models import get_model
from schemas.policy import Policy
from tests.benchmarks.harness import Figure, run_jobs, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, start_server, upload_jobs
from tests.services.procs import ROOT, wait_until
from tests.sglang_server import SimulatedSGLang
from worker.image import prepare_image
from worker.inference.base import InferenceRequest
from worker.inference.sglang import SGLangBackend

IDEAL_PER_S = 40.0  # C / service time: what the simulated GPU serves when saturated, kept within this box's means


async def direct_client(url: str, bodies: list[dict[str, object]], in_flight: int) -> float:
    """Images/s of a bare asyncio client keeping ``in_flight`` requests outstanding, one kept-alive connection each.

    Plain HTTP/1.1 on asyncio streams with the bodies encoded beforehand: the cheapest client Python has. (httpx's
    pool scans its connections on every request: at 640 in flight it used 8-12 ms of CPU per request, stalled its
    event loop for 4-6 s and, on a connection idle that long, raced the server's 5 s keep-alive close: a ReadError.)
    """
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    encoded = [json.dumps(body).encode() for body in bodies]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for data in encoded:
        queue.put_nowait(data)

    async def drain() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not queue.empty():
                data = queue.get_nowait()
                for attempt in (1, 2):  # a kept-alive connection the server closed under us: once more on a new one
                    if connection is None:
                        connection = await asyncio.open_connection(host, port)
                    try:
                        closes = await _post(*connection, host, data)
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        connection[1].close()
                        connection = None
                        if attempt == 2:
                            raise
                if closes and connection is not None:
                    connection[1].close()
                    connection = None
        finally:
            if connection is not None:
                connection[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(drain() for _ in range(in_flight)))
    return len(bodies) / (time.perf_counter() - start)


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, data: bytes) -> bool:
    """One POST on a kept-alive connection; raises on a non-200 answer; True when the server closes it after."""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    status = (await reader.readline()).split(b" ", 2)
    if len(status) < 2:
        raise asyncio.IncompleteReadError(b"", None)
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    if status[1] != b"200":
        raise RuntimeError(f"direct client: HTTP {status[1].decode()} from the server")
    return headers.get("connection", "").lower() == "close"


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


def _server(c: int, mode: str) -> SimulatedSGLang:
    """Capacity ``c``; ``fixed``: every request takes c/40 s; ``tokens``: prefill plus per-token decode plus jitter,
    the same c/40 s on average (the rate a saturated server reaches either way)."""
    service_s = c / IDEAL_PER_S
    if mode == "fixed":
        return start_server(max_running=c, latency_s=service_s)
    tokens = 40  # what the test server generates for these images (short scripted rationale)
    sim = start_server(max_running=c)
    sim.configure(prefill_s=0.25 * service_s, per_token_s=0.5 * service_s / tokens, jitter_s=0.5 * service_s)
    return sim


def run(
    workdir: Path, sweep: tuple[int, ...] = (8, 32, 128, 512), modes: tuple[str, ...] = ("fixed", "tokens")
) -> list[Figure]:
    """Default ``guardq worker`` (no concurrency set: worker.inflight sizes it) against the best direct client."""
    figures: list[Figure] = []
    with services(workdir) as svc:
        for mode in modes:
            for c in sweep:
                figures += _one(svc, workdir, c, mode)
        figures += naive_comparison(svc, workdir)
    return figures


def _one(svc: Any, workdir: Path, c: int, mode: str) -> list[Figure]:
    sim = _server(c, mode)
    try:
        n = max(6 * c, 480)  # several waves of the server's batch, so ramp-up and drain stay a small share
        env = svc.env(sim.url, GUARDQ_SCORES="true")  # production defaults: no GUARDQ_WORKER_CONCURRENCY
        settings = settings_from(env)
        seed = c + (0 if mode == "fixed" else 50_000)  # distinct images per run: no verdict-cache hit between runs
        bodies = request_bodies(sim.url, distinct_jpegs(n, seed=seed))
        direct = {k: asyncio.run(direct_client(sim.url, bodies, k)) for k in (c, math.ceil(1.25 * c))}
        best_k, best = max(direct.items(), key=lambda kv: kv[1])
        sim.reset()
        sim = _reconfigure(sim, c, mode)
        queue = JobQueue(settings)
        with worker(env, workdir / f"{mode}-c{c}", name=f"p1-{mode}-c{c}"):
            wall, seen = run_jobs(queue, upload_jobs(settings, distinct_jpegs(n, seed=seed + 1000)), 600)
            peak = sim.peak_running, sim.peak_waiting
        queue.close()
        assert seen == n, f"only {seen}/{n} events"
        ours = n / wall
        return [
            Figure(
                "P1",
                f"default guardq/best direct, C={c} {mode}",
                ours / best,
                "ratio",
                target=0.97,
                note=f"guardq {ours:.1f}/s (server peak running {peak[0]}, queued {peak[1]}), "
                f"direct {best:.1f}/s at {best_k} in flight, ideal {IDEAL_PER_S:.0f}/s, n={n}",
                extra={
                    "guardq_per_s": ours,
                    "direct_per_s": direct,
                    "n": n,
                    "peak_running": peak[0],
                    "peak_waiting": peak[1],
                },
            )
        ]
    finally:
        sim.stop()


def _reconfigure(sim: SimulatedSGLang, c: int, mode: str) -> SimulatedSGLang:
    service_s = c / IDEAL_PER_S
    if mode == "fixed":
        sim.configure(max_running=c, latency_s=service_s)
    else:
        sim.configure(
            max_running=c, prefill_s=0.25 * service_s, per_token_s=0.5 * service_s / 40, jitter_s=0.5 * service_s
        )
    return sim


def naive_comparison(svc: Any, workdir: Path, c: int = 32) -> list[Figure]:
    """One row against a naive Celery GPU worker (prefork, concurrency 1): what a threads pool buys."""
    sim = _server(c, "fixed")
    try:
        env = svc.env(sim.url, GUARDQ_SCORES="true")
        settings = settings_from(env)
        queue = JobQueue(settings)
        n = 480
        with worker(env, workdir / "naive-ref", name="p1-naive-ref"):
            wall, seen = run_jobs(queue, upload_jobs(settings, distinct_jpegs(n, seed=77)), 300)
        assert seen == n
        sim.reset()
        sim.configure(max_running=c, latency_s=c / IDEAL_PER_S)
        naive = naive_throughput(env, workdir, queue, distinct_jpegs(6, seed=2000))
        queue.close()
        return [
            Figure(
                "P1",
                f"guardq/naive prefork c1, C={c}",
                (n / wall) / naive,
                "x",
                target=15.0,
                note=f"naive {naive:.2f}/s",
            )
        ]
    finally:
        sim.stop()
