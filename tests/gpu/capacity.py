"""The in-flight controller and the rationale modes on a real SGLang server (``run_e2e.py capacity``).

- **Saturation**: a direct asyncio client (guardq's request bodies) at C in flight, against a default ``guardq
  worker`` attached to the same server (no concurrency set: ``worker.inflight`` sizes it), verdict-only, Redis and
  Celery in the loop. The worker's limit is sampled from the fleet registry every second.
- **Interactive latency under a bulk backlog**: 2,000 bulk jobs enqueued, then interactive jobs one every half
  second; their end-to-end latency (enqueue to terminal event) while the backlog waits.
- **Rationale modes**: guardq's own SGLang client, ``always`` (one pass) against ``flagged`` (verdict first,
  rationale continued for flagged verdicts) with a chosen 90 % Safe / 10 % flagged mix: random weights cannot
  choose the mix, so the driver decides which verdicts count as flagged (every tenth image).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.gpu import probes
from tests.gpu.run_e2e import MODEL, ROOT, collect, enqueue, noise_jpeg, stop, wait_node


def direct(url: str, concurrency: int, n: int, seed0: int) -> dict[str, Any]:
    body = probes.body_for(url, 1, with_rationale=False)
    return asyncio.run(probes._sweep_point(url, body, concurrency, n, seed0))


def sample_limit(redis_port: int, node: str, stop: threading.Event, out: list[tuple[float, str]]) -> None:
    client = redis.Redis(port=redis_port)
    started = time.monotonic()
    while not stop.wait(1.0):
        value = client.hget(f"guardq:fleet:node:{node}", "concurrency")
        out.append((round(time.monotonic() - started, 1), (value or b"").decode()))


def server_metrics(url: str) -> dict[str, str]:
    text = httpx.get(url + "/metrics", timeout=10).text
    keep = ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:cache_hit_rate")
    return {line.split("{")[0]: line for line in text.splitlines() if line.startswith(keep)}


def saturation(env: dict[str, str], url: str, redis_port: int, n: int, sweep: tuple[int, ...] = (64, 128)) -> dict[str, Any]:
    """The direct client over ``sweep`` (several waves per point: at least 64 requests and twice C), then the
    default worker on ``n`` jobs, minutes apart on the same server."""
    results: dict[str, Any] = {"direct": []}
    for c in sweep:
        results["direct"].append(direct(url, c, max(64, 2 * c), 7_000_000 + c * 1000))
        print("direct", results["direct"][-1], flush=True)
    ids, started, after = enqueue(env, n, 8_000_000, verdict_only=True)
    stop, limits = threading.Event(), []
    sampler = threading.Thread(target=sample_limit, args=(redis_port, "attached@gpu", stop, limits), daemon=True)
    sampler.start()
    busy = {}

    def grab() -> None:
        time.sleep(8)
        busy.update(server_metrics(url))

    threading.Thread(target=grab, daemon=True).start()
    results["guardq"] = collect(env, ids, after, started, 400)
    results["guardq"].pop("sample", None)
    stop.set()
    results["limits"] = limits
    results["metrics_while_busy"] = busy
    best = max(results["direct"], key=lambda r: r["images_per_s"])
    results["ratio_to_best_direct"] = round(results["guardq"]["images_per_s"] / best["images_per_s"], 3)
    return results


def interactive_under_backlog(env: dict[str, str], redis_port: int, bulk: int = 2000, interactive: int = 20) -> dict[str, Any]:
    import os

    os.environ.update({k: v for k, v in env.items() if k.startswith("GUARDQ_")})
    from producers.broker import JobQueue
    from producers.uploads import UploadStore
    from schemas.job import ModerationJob, Priority
    from schemas.keys import model_queues
    from schemas.models import get_model
    from schemas.policy import Policy
    from schemas.settings import load_settings
    from worker.delivery.stream.reader import last_id, wait_for

    settings = load_settings()
    store, queue = UploadStore(settings), JobQueue(settings)
    policy = Policy(name="gpu-verdict-only", verdict_only=True)
    backlog = [ModerationJob(image=store.put(noise_jpeg(9_000_000 + i)), policy=policy, priority=Priority.BULK)
               for i in range(bulk)]
    queue.send_many(backlog)
    time.sleep(5)  # the worker is busy with bulk jobs, the server full
    after = last_id(queue.redis)
    sent: dict[str, float] = {}
    for i in range(interactive):
        job = ModerationJob(image=store.put(noise_jpeg(9_500_000 + i)), policy=policy)
        queue.send(job)
        sent[job.job_id] = time.time()
        time.sleep(0.5)
    latencies = sorted(e.time.timestamp() - sent[e.data.job_id] for e in wait_for(queue.redis, list(sent), after=after, timeout_s=120))
    bulk_waiting = queue.depth(model_queues(get_model(MODEL))[1])
    queue.redis.delete(*model_queues(get_model(MODEL)))
    return {
        "bulk_enqueued": bulk,
        "bulk_still_waiting_at_end": bulk_waiting,
        "interactive": len(latencies),
        "p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
        "max_s": round(latencies[-1], 3) if latencies else None,
    }


def rationale_modes(url: str, n: int = 128, concurrency: int = 128) -> dict[str, Any]:
    from schemas.models import get_model
    from schemas.policy import Policy
    from schemas.settings import Settings
    from worker.image import prepare_image
    from worker.inference.base import InferenceRequest
    from worker.inference.sglang import SGLangBackend

    @dataclass(frozen=True)
    class Mixed(InferenceRequest):
        every_tenth: bool = False

        def flagged(self, verdict: Any) -> bool:  # the chosen mix: 10 % flagged, whatever the random weights say
            return self.every_tenth

    backend = SGLangBackend(Settings(sglang_url=url), get_model(MODEL))
    text = Policy().text(get_model(MODEL).prompt_version)
    out: dict[str, Any] = {}
    for mode, seed0 in (("always", 10_000_000), ("flagged", 11_000_000)):
        requests = [
            Mixed(
                image=prepare_image(noise_jpeg(seed0 + i), max_side=336, max_pixels=10**8),
                policy_text=text,
                rid=f"{mode}-{i}",
                want_score=True,
                flagged_only=mode == "flagged",
                every_tenth=i % 10 == 0,
            )
            for i in range(n)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(backend.infer, requests))
        wall = time.perf_counter() - started
        continued = [r for r in results if r.extra.get("rationale_step") == "continued"]
        pairs = [(int(r.extra.get("continuation_cached_tokens") or 0), int(r.extra.get("continuation_prompt_tokens") or 0))
                 for r in continued]
        cached = [c / p for c, p in pairs if p]
        out[mode] = {
            "n": n,
            "images_per_s": round(n / wall, 2),
            "with_rationale": sum(1 for r in results if r.verdict.rationale is not None),
            "continued": len(continued),
            "continuation_cached_share_min": round(min(cached), 4) if cached else None,
            "continuation_cached_share_mean": round(sum(cached) / len(cached), 4) if cached else None,
            # the figure: of all second-step prompt tokens, the share SGLang reported as cached
            "continuation_cached_share_total": round(sum(c for c, _ in pairs) / max(1, sum(p for _, p in pairs)), 4)
            if pairs else None,
            "continuations_at_least_95pct_cached": sum(1 for share in cached if share >= 0.95),
            "truncated": sum(1 for r in results if r.verdict.rationale_truncated),
            "sample": [r.raw_text[:300] for r in continued[:2]],
        }
    backend.close()
    out["flagged_over_always"] = round(out["flagged"]["images_per_s"] / out["always"]["images_per_s"], 3)
    return out


def run(
    env: dict[str, str], url: str, redis_port: int, out: Path, n: int, *, sweep: tuple[int, ...], rationale: bool = True
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if rationale:
        results["rationale_modes"] = rationale_modes(url)
        print("rationale_modes", json.dumps(results["rationale_modes"])[:800], flush=True)
    (out / "worker").mkdir(exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "--sglang-url", url, "--hostname", "attached@gpu", "--model", MODEL],
        env=env | {"GUARDQ_VERDICT_CACHE_TTL_S": "0"}, cwd=ROOT,
        stdout=(out / "worker" / "worker.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_node(redis_port, "attached@gpu", worker)
        results["saturation"] = saturation(env, url, redis_port, n, sweep)
        print("saturation", json.dumps({k: v for k, v in results["saturation"].items() if k != "limits"})[:1500], flush=True)
        results["interactive_under_backlog"] = interactive_under_backlog(env, redis_port)
        print("interactive", results["interactive_under_backlog"], flush=True)
    finally:
        stop(worker)
    return results
