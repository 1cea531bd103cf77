"""guardq end to end against a real SGLang server on a GPU machine (``tests/gpu/README.md``).

Two ways a user runs guardq, each with the product's defaults (only the server flags the trimmed test kit needs
and the local checkpoint paths are set):

- ``launched``: ``guardq worker --gpus 0`` launches and supervises the SGLang server itself (it sets
  ``SGLANG_RETURN_ORIGINAL_LOGPROB=1``), then its worker consumes;
- ``attached``: an SGLang server someone else started (plain ``python -m sglang.launch_server``, tempered
  logprobs), and ``guardq worker --sglang-url`` attached to it.

Each enqueues N distinct images with rationales and N verdict-only, waits for every terminal event and writes
``$OUT/e2e-<mode>.json``: jobs, completed, failed by code, invalid outputs, retries per 1,000 jobs, score spread
and method, truncated rationales, images/s, latency percentiles, and the worker's own log counts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
from PIL import Image  # noqa: E402

# Only what the trimmed kit needs (FA3 is not in it) and random weights need (no whitespace walks); a real
# deployment keeps SGLang's defaults.
KIT_FLAGS = (
    "--attention-backend triton --mm-attention-backend triton_attn --sampling-backend pytorch "
    "--grammar-backend xgrammar --constrained-json-disable-any-whitespace --mm-feature-transport cpu"
)
MODEL = "AIML-TUDA/LlavaGuard-7B"
# --simulate (a dry run of this script without a GPU): the SGLang-protocol test server stands in for SGLang
SIMULATE = "--simulate" in sys.argv
SERVER_CMD = f"{sys.executable} -m " + ("tests.sglang_server" if SIMULATE else "sglang.launch_server")
REDIS_DIR = Path("/tmp/redis")


def noise_jpeg(seed: int, size: tuple[int, int] = (448, 336)) -> bytes:
    """A distinct photo-like image per seed (noise plus a marker pixel), so no job is a cache hit."""
    rnd = random.Random(seed)
    image = Image.effect_noise(size, 20 + seed % 60).convert("RGB")
    image.putpixel((rnd.randrange(size[0]), rnd.randrange(size[1])), (seed % 256, (seed >> 8) % 256, 7))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def start_redis(port: int, out: Path) -> subprocess.Popen[bytes]:
    binary = REDIS_DIR / "usr/bin/redis-server"
    if not binary.exists():  # a dry run here: the machine's own
        binary = Path("redis-server")
    env = {**os.environ, "LD_LIBRARY_PATH": str(REDIS_DIR / "usr/lib/x86_64-linux-gnu")}
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=(out / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start: " + (out / "redis.log").read_text()[-500:])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 60) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout_s``."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_node(redis_port: int, node: str, proc: subprocess.Popen[bytes], *, launched: bool = False) -> float:
    """Seconds until the worker node consumes (and, for a launched fleet, its server is ready)."""
    client = redis.Redis(port=redis_port)
    started = time.monotonic()
    while True:
        fields = {k.decode(): v.decode() for k, v in client.hgetall(f"guardq:fleet:node:{node}").items()}
        if fields.get("consuming") == "1" and (not launched or fields.get("server_state") == "ready"):
            return round(time.monotonic() - started, 1)
        if proc.poll() is not None or time.monotonic() - started > 420:
            raise RuntimeError(f"{node} not serving: {fields}; process exit {proc.poll()}")
        time.sleep(1)


def guardq_env(redis_port: int, ckpt: Path, out: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "GUARDQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GUARDQ_MODEL": MODEL,
        "GUARDQ_SGLANG_MODEL_PATH": str(ckpt / "llava-rand"),
        "GUARDQ_SGLANG_TOKENIZER_PATH": str(ckpt / "llava-rand-tok"),
        "GUARDQ_SGLANG_LAUNCH_CMD": SERVER_CMD,
        "GUARDQ_UPLOAD_STORE": "file:///tmp/guardq-uploads",
        "GUARDQ_LOG_FORMAT": "json",
        "GUARDQ_METRICS_PORT": "0",
    }


def enqueue(env: dict[str, str], count: int, seed0: int, verdict_only: bool) -> tuple[list[str], float, str]:
    os.environ.update({k: v for k, v in env.items() if k.startswith("GUARDQ_")})
    from producers.broker import JobQueue
    from producers.uploads import UploadStore
    from schemas.job import ModerationJob
    from schemas.policy import Policy
    from schemas.settings import load_settings
    from worker.delivery.stream.reader import last_id

    settings = load_settings()
    store, queue = UploadStore(settings), JobQueue(settings)
    policy = Policy(name="gpu-verdict-only", verdict_only=True) if verdict_only else None
    jobs = [ModerationJob(image=store.put(noise_jpeg(seed0 + i)), policy=policy) for i in range(count)]
    after = last_id(queue.redis)
    started = time.time()
    queue.send_many(jobs)
    return [j.job_id for j in jobs], started, after


def collect(env: dict[str, str], job_ids: list[str], after: str, started: float, timeout_s: float) -> dict[str, Any]:
    from producers.broker import JobQueue
    from schemas.settings import load_settings
    from worker.delivery.stream.reader import wait_for

    queue = JobQueue(load_settings())
    events = list(wait_for(queue.redis, job_ids, after=after, timeout_s=timeout_s))
    finished = time.time()
    completed = [e for e in events if e.completed]
    failed: dict[str, int] = {}
    for event in events:
        if event.data.error is not None:
            failed[event.data.error.code.value] = failed.get(event.data.error.code.value, 0) + 1
    scores = sorted(e.data.verdict.unsafe_score for e in completed if e.data.verdict and e.data.verdict.unsafe_score is not None)
    methods: dict[str, int] = {}
    for event in completed:
        method = str(event.data.verdict.score_method) if event.data.verdict else "none"
        methods[method] = methods.get(method, 0) + 1
    totals = sorted(e.data.timings.total_ms or 0.0 for e in completed)
    attempts = [e.data.error.attempts if e.data.error else 1 for e in events]

    def pct(values: list[float], q: float) -> float | None:
        return round(values[min(len(values) - 1, int(q * len(values)))], 4) if values else None

    wall = max((e.time.timestamp() for e in events), default=finished) - started
    return {
        "jobs": len(job_ids),
        "terminal_events": len(events),
        "missing": len(job_ids) - len(events),
        "completed": len(completed),
        "failed_by_code": failed,
        "invalid_model_output": failed.get("invalid_model_output", 0),
        "ratings": {r: sum(1 for e in completed if e.data.verdict and e.data.verdict.rating == r) for r in ("Safe", "Unsafe")},
        "rationale_truncated": sum(1 for e in completed if e.data.verdict and e.data.verdict.rationale_truncated),
        "score_methods": methods,
        "score_spread": {q: pct(scores, q) for q in (0.0, 0.05, 0.25, 0.5, 0.75, 0.95)} | {"max": scores[-1] if scores else None},
        "max_attempts": max(attempts, default=0),
        "wall_s": round(wall, 2),
        "images_per_s": round(len(completed) / wall, 2) if wall > 0 else None,
        "total_ms_p50": pct(totals, 0.5),
        "total_ms_p95": pct(totals, 0.95),
        "sample": [json.loads(e.to_json()) for e in completed[:2]],
    }


def log_counts(log_dir: Path) -> dict[str, int]:
    """How often the worker logged each warning-level event (retries, re-requests, truncations)."""
    counts: dict[str, int] = {}
    for path in log_dir.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") in {"warning", "error"} or record.get("event") in {"sglang_logprobs_probed"}:
                key = f"{record.get('event')}" + (f":{record['kind']}" if "kind" in record else "")
                counts[key] = counts.get(key, 0) + 1
    return counts


def run_jobs(env: dict[str, str], n: int, seed0: int, timeout_s: float) -> dict[str, Any]:
    results = {}
    for name, verdict_only, seed in (("rationale", False, seed0), ("verdict_only", True, seed0 + 100_000)):
        ids, started, after = enqueue(env, n, seed, verdict_only)
        results[name] = collect(env, ids, after, started, timeout_s)
        print(name, {k: v for k, v in results[name].items() if k != "sample"}, flush=True)
    return results


def launched(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    env = guardq_env(args.redis_port, args.ckpt, out)
    cmd = [sys.executable, "-m", "worker", "--gpus", "0", "--base-port", str(args.port), "--server-args", KIT_FLAGS,
           "--log-dir", str(out / "fleet"), "--node-host", "gpu"]
    fleet = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=(out / "launcher.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        ready_s = wait_node(args.redis_port, "gpu0@gpu", fleet, launched=True)
        print("fleet serving after", ready_s, "s", flush=True)
        results = {"mode": "launched", "ready_s": ready_s, "command": " ".join(cmd)}
        results |= run_jobs(env, args.jobs, 1, args.timeout)
    finally:
        fleet.terminate()
        fleet.wait(120)
    results["worker_log"] = log_counts(out / "fleet")
    return results


def start_plain_server(
    args: argparse.Namespace,
    env: dict[str, str],
    out: Path,
    extra: tuple[str, ...] = (),
    *,
    model: tuple[str, ...] | None = None,
    log: str = "server.log",
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """An SGLang server as a user starts it (tempered logprobs: no SGLANG_RETURN_ORIGINAL_LOGPROB); ``model``: the
    flags naming the checkpoint (default the LLaVA-1.5 one of ``device.sh build``)."""
    server_env = {k: v for k, v in env.items() if k != "SGLANG_RETURN_ORIGINAL_LOGPROB"}
    model = model or ("--model-path", str(args.ckpt / "llava-rand"), "--tokenizer-path", str(args.ckpt / "llava-rand-tok"),
                      "--chat-template", "vicuna_v1.1")
    server_cmd = [*SERVER_CMD.split(), *model, "--host", "127.0.0.1", "--port", str(args.port), "--enable-metrics",
                  "--enable-cache-report", *KIT_FLAGS.split(), *extra]
    server = subprocess.Popen(server_cmd, env=server_env, stdout=(out / log).open("wb"), stderr=subprocess.STDOUT)
    return server, server_cmd


def capacity_mode(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from tests.gpu import capacity

    env = guardq_env(args.redis_port, args.ckpt, out)
    server, server_cmd = start_plain_server(args, env, out)
    try:
        ready_s = wait_http(f"http://127.0.0.1:{args.port}/health", 420, server)
        results: dict[str, Any] = {"mode": "capacity", "ready_s": round(ready_s, 1), "server": " ".join(server_cmd)}
        sweep = tuple(int(c) for c in args.sweep.split(","))
        url = f"http://127.0.0.1:{args.port}"
        results |= capacity.run(env, url, args.redis_port, out, args.jobs, sweep=sweep, rationale=args.rationale)
    finally:
        stop(server)
    return results


def rationale_mode(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``always`` against ``flagged`` on a server started with ``--server-flags`` (one variant per call)."""
    from tests.gpu import capacity

    env = guardq_env(args.redis_port, args.ckpt, out)
    extra = tuple(args.server_flags.split())
    server, server_cmd = start_plain_server(args, env, out, extra)
    try:
        url = f"http://127.0.0.1:{args.port}"
        ready_s = wait_http(url + "/health", 420, server)
        results: dict[str, Any] = {"mode": "rationale", "label": args.label, "ready_s": round(ready_s, 1),
                                   "server": " ".join(server_cmd)}
        for concurrency in (int(c) for c in args.sweep.split(",")):
            results[f"c{concurrency}"] = capacity.rationale_modes(url, n=args.jobs, concurrency=concurrency)
            print(concurrency, json.dumps(results[f"c{concurrency}"])[:900], flush=True)
        results["metrics_after"] = capacity.server_metrics(url)
    finally:
        stop(server)
    return results


def detail_mode(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Images/s per image-detail level with the OneVision 7B shape (``tests/gpu/detail.py``)."""
    from tests.gpu import capacity, detail

    env = guardq_env(args.redis_port, args.ckpt, out)
    ov = ("--model-path", str(args.ckpt / "ov-rand"), "--chat-template", "chatml-llava")
    server, server_cmd = start_plain_server(args, env, out, model=ov, log="server-ov.log")
    try:
        url = f"http://127.0.0.1:{args.port}"
        ready_s = wait_http(url + "/health", 420, server)
        print("ov server ready after", round(ready_s, 1), "s", flush=True)
        results: dict[str, Any] = {"mode": "detail", "ready_s": round(ready_s, 1), "server": " ".join(server_cmd)}
        results |= detail.run(
            url, sweep=tuple(int(c) for c in args.sweep.split(",")), n=args.jobs, rationale=args.rationale
        )
        results["metrics_after"] = capacity.server_metrics(url)
    finally:
        stop(server)
    return results


def attached(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    env = guardq_env(args.redis_port, args.ckpt, out)
    server_env = {k: v for k, v in env.items() if k != "SGLANG_RETURN_ORIGINAL_LOGPROB"}
    server_cmd = [*SERVER_CMD.split(), "--model-path", str(args.ckpt / "llava-rand"),
                  "--tokenizer-path", str(args.ckpt / "llava-rand-tok"), "--chat-template", "vicuna_v1.1",
                  "--host", "127.0.0.1", "--port", str(args.port), "--enable-metrics", "--enable-cache-report",
                  *KIT_FLAGS.split()]
    server = subprocess.Popen(server_cmd, env=server_env, stdout=(out / "server.log").open("wb"), stderr=subprocess.STDOUT)
    worker = None
    try:
        ready_s = wait_http(f"http://127.0.0.1:{args.port}/health", 420, server)
        from tests.gpu import probes

        results: dict[str, Any] = {"mode": "attached", "ready_s": round(ready_s, 1), "server": " ".join(server_cmd)}
        results["probes"] = probes.run_all(f"http://127.0.0.1:{args.port}", out, concurrencies=args.sweep)
        (out / "worker").mkdir(exist_ok=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "--sglang-url", f"http://127.0.0.1:{args.port}", "--hostname", "attached@gpu"],
            env=env, cwd=ROOT, stdout=(out / "worker" / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        )
        wait_node(args.redis_port, "attached@gpu", worker)
        results |= run_jobs(env, args.jobs, 500_000, args.timeout)
    finally:
        for proc in (worker, server):
            stop(proc)
    results["worker_log"] = log_counts(out / "worker")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["launched", "attached", "capacity", "rationale", "detail"])
    parser.add_argument("--ckpt", type=Path, default=Path("/tmp/ck-7b"))
    parser.add_argument("--jobs", type=int, default=256)
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--sweep", default="8,32,128,256")
    parser.add_argument("--server-flags", default="", help="rationale mode: extra launch_server flags")
    parser.add_argument("--label", default="default", help="rationale mode: names the output file")
    parser.add_argument("--no-rationale", dest="rationale", action="store_false", help="capacity: skip the modes")
    parser.add_argument("--simulate", action="store_true", help="dry run with the SGLang-protocol test server")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    redis_proc = start_redis(args.redis_port, out)
    try:
        modes = {"launched": launched, "attached": attached, "capacity": capacity_mode, "rationale": rationale_mode,
                 "detail": detail_mode}
        results = modes[args.mode](args, out)
    finally:
        redis_proc.terminate()
    name = f"{args.mode}-{args.label}" if args.mode == "rationale" else args.mode
    (out / f"e2e-{name}.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps({k: v for k, v in results.items() if k not in {"probes"}}, default=str)[:3000])


if __name__ == "__main__":
    main()
