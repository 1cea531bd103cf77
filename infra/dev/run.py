"""``make run``: the whole flow on one machine — Redis, a worker, the sample images, their verdict events.

Starts a local ``redis-server`` on a free port if nothing answers at ``GUARDQ_REDIS_URL``, checks the SGLang server
(or, with ``--simulated``, starts the SGLang-protocol test server and marks every event as simulated), starts one
worker, enqueues ``infra/dev/samples/*`` and prints each terminal event. Everything it started is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var" / "run"
SAMPLES = ROOT / "infra" / "dev" / "samples"
sys.path.insert(0, str(ROOT))

from schemas.models import get_model  # noqa: E402
from schemas.settings import load_settings  # noqa: E402


def say(message: str) -> None:
    print(f"[guardq run] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def process(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_for(predicate: object, timeout_s: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    say(f"{what} did not come up; last lines of {log}:")
    print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
    raise SystemExit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulated", action="store_true", help="use the SGLang-protocol test server")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("GUARDQ_UPLOAD_STORE", f"file://{ROOT / 'var' / 'uploads'}")
    env.setdefault("GUARDQ_LOG_FORMAT", "json")
    os.environ.update(env)
    settings = load_settings()
    model = get_model(settings.model)

    with contextlib.ExitStack() as stack:
        if not redis_answers(settings.redis_url):
            if shutil.which("redis-server") is None:
                say(f"no Redis at {settings.redis_url} and no redis-server to start; install redis-server")
                return 2
            port = free_port()
            log = VAR / "redis.log"
            proc = stack.enter_context(
                process(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--maxmemory-policy",
                        "noeviction",
                    ],
                    log,
                    env,
                )
            )
            env["GUARDQ_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            wait_for(lambda: redis_answers(env["GUARDQ_REDIS_URL"]), 15, "redis-server", proc, log)
            say(f"started redis-server on port {port} (nothing answered at {settings.redis_url})")

        if args.simulated:
            port = free_port()
            log = VAR / "sglang-simulated.log"
            proc = stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-m",
                        "tests.sglang_server",
                        "--port",
                        str(port),
                        "--model-path",
                        f"simulated/{model.name}",
                        "--latency",
                        "0.05",
                    ],
                    log,
                    env,
                )
            )
            env["GUARDQ_SGLANG_URL"] = f"http://127.0.0.1:{port}"
            wait_for(lambda: "READY" in log.read_text(errors="replace"), 15, "simulated SGLang", proc, log)
            say(f"SIMULATED SGLang server on port {port}: verdicts are fake and every event is marked simulated")
        else:
            try:
                ok = httpx.get(f"{settings.sglang_url}/health", timeout=3.0).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                launch = " ".join(model.sglang_launch_args(port=10000))
                say(
                    f"no SGLang server ready at {settings.sglang_url}; start one with "
                    f"`CUDA_VISIBLE_DEVICES=0 {launch}` or try `make run SGLANG=simulated`"
                )
                return 3

        log = VAR / "worker.log"
        proc = stack.enter_context(
            process([sys.executable, "-m", "worker", "--hostname=run@localhost", "--ready-timeout=30"], log, env)
        )
        wait_for(lambda: " ready." in log.read_text(errors="replace"), 60, "worker", proc, log)
        say(f"worker up (log: {log.relative_to(ROOT)}); enqueueing {len(list(SAMPLES.iterdir()))} sample images")

        samples = sorted(str(p) for p in SAMPLES.iterdir() if p.is_file())
        enqueue = subprocess.run(
            [
                sys.executable,
                "-c",
                "from producers.cli import main; main()",
                "enqueue",
                *samples,
                "--wait",
                "--timeout",
                str(args.timeout),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if enqueue.stderr.strip():
            print(enqueue.stderr.strip(), file=sys.stderr)
        events = [json.loads(line) for line in enqueue.stdout.splitlines() if line.strip()]
        for event in events:
            print(json.dumps(event, indent=2))
        say("summary:")
        for event in events:
            data = event["data"]
            verdict = data.get("verdict") or {}
            outcome = (
                f"{verdict.get('rating')} / {verdict.get('category')}" if verdict else f"FAILED {data['error']['code']}"
            )
            mark = " [simulated]" if event.get("simulated") else ""
            name = data.get("metadata", {}).get("source_file") or event["subject"]
            print(f"  {name}: {outcome}{mark}", file=sys.stderr)
        return enqueue.returncode


if __name__ == "__main__":
    raise SystemExit(main())
