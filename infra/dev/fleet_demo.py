"""A measured fleet run without GPUs: ``guardq worker --gpus`` with the SGLang test server per fake GPU.

Starts its own Redis, launches the fleet (the product launcher; only ``--server-cmd`` points at
``python -m tests.sglang_server``, a test double whose every verdict is simulated), enqueues ``--jobs`` copies of
the sample images, waits for every terminal event, then prints the per-server request counts (from each server's
own request log), throughput and ``guardq fleet status``, and drains the fleet with SIGTERM.

    .venv/bin/python infra/dev/fleet_demo.py --gpus 0,1 --jobs 200 --latency 0.05
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var" / "fleet-demo"
sys.path.insert(0, str(ROOT))

from producers.broker import JobQueue  # noqa: E402
from producers.uploads import UploadStore  # noqa: E402
from schemas.job import ModerationJob  # noqa: E402
from schemas.keys import fleet_node_key  # noqa: E402
from schemas.settings import load_settings  # noqa: E402
from worker.delivery import last_id, wait_for  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise SystemExit(f"fleet demo: {what} not ready after {timeout_s:g}s (logs in {VAR})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="0,1", help="fake GPU ids (CUDA_VISIBLE_DEVICES values)")
    parser.add_argument("--model", default="AIML-TUDA/LlavaGuard-7B")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request on the test server")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("fleet demo: needs redis-server on PATH")
    shutil.rmtree(VAR, ignore_errors=True)
    VAR.mkdir(parents=True)
    redis_port, base_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "GUARDQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GUARDQ_UPLOAD_STORE": f"file://{VAR / 'uploads'}",
        "GUARDQ_LOG_FORMAT": "json",
        "GUARDQ_HEARTBEAT_INTERVAL_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=redis_port)
    fleet: subprocess.Popen[bytes] | None = None
    try:
        until(lambda: _ping(client), 15, "redis")
        command = [
            str(Path(sys.executable).parent / "guardq"),
            "worker",
            "--gpus",
            args.gpus,
            "--model",
            args.model,
            "--server-cmd",
            f"{sys.executable} -m tests.sglang_server",
            "--server-args",
            f"--latency {args.latency}",
            "--base-port",
            str(base_port),
            "--metrics-port",
            str(metrics_port),
            "--concurrency",
            str(args.concurrency),
            "--log-dir",
            str(VAR),
        ]
        print("$ " + shlex.join(command), flush=True)
        with (VAR / "launcher.log").open("wb") as out:
            fleet = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        gpus = args.gpus.split(",")
        nodes = [f"gpu{g}@{socket.gethostname()}" for g in gpus]
        until(lambda: all(client.hget(fleet_node_key(n), "consuming") == b"1" for n in nodes), 60, "fleet")

        settings = load_settings()
        store, queue = UploadStore(settings), JobQueue(settings)
        # One distinct image per job: identical bytes would be answered by the verdict cache, not a server.
        jobs = [ModerationJob(image=store.put(_distinct_image(i)), model=args.model) for i in range(args.jobs)]
        start, started = last_id(queue.redis), time.perf_counter()
        for job in jobs:
            queue.send(job)
        events = list(wait_for(queue.redis, [j.job_id for j in jobs], after=start, timeout_s=600))
        elapsed = time.perf_counter() - started
        ids = {j.job_id for j in jobs}
        print(f"\n{len(events)}/{args.jobs} jobs ended in {elapsed:.2f}s = {len(events) / elapsed:.1f} jobs/s")
        print(f"completed: {sum(e.completed for e in events)}, failed: {sum(not e.completed for e in events)}")
        total, seen = 0, set()
        for index, gpu in enumerate(gpus):
            url = f"http://127.0.0.1:{base_port + index}"
            log = httpx.get(f"{url}/_control/requests", timeout=5).json()
            mine = [r for r in log["requests"] if r["path"] == "/v1/chat/completions"]
            served = {str(r["rid"]).split(".")[0] for r in mine} & ids
            total += len(served)
            overlap, seen = seen & served, seen | served
            print(
                f"server gpu{gpu} ({url}, CUDA_VISIBLE_DEVICES={gpu}): {len(mine)} chat requests, peak running "
                f"{log['peak_running']}"
            )
        exactly_once = total == len(seen) == args.jobs and not overlap
        verdict = "each job reached exactly one server" if exactly_once else "NOT one server per job"
        print(f"jobs served across servers: {total} for {args.jobs} jobs ({verdict})")
        time.sleep(1.5)  # one more heartbeat so the status shows final counts
        print()
        subprocess.run([str(Path(sys.executable).parent / "guardq"), "fleet", "status"], env=env, check=False)
        return 0
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.send_signal(signal.SIGTERM)
            fleet.wait(60)
        redis_proc.terminate()
        redis_proc.wait(10)


def _distinct_image(index: int) -> bytes:
    """A small lossless image whose bytes differ for every ``index`` (JPEG quantization would merge near colours)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (index % 256, (index // 256) % 256, 97)).save(buf, "PNG")
    return buf.getvalue()


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
