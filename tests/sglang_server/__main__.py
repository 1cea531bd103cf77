"""Run the SGLang-protocol test server standalone: ``python -m tests.sglang_server --port 10000``.

Used by ``make run SGLANG=simulated`` and by fleet tests that need a server per fake GPU. Prints one line
``READY <url>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from tests.sglang_server.server import DEFAULT_MODEL_PATH, SimulatedSGLang


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-path", default=DEFAULT_MODEL_PATH)
    parser.add_argument("--latency", type=float, default=0.0, help="fixed seconds per request")
    parser.add_argument("--per-token", type=float, default=0.0, help="seconds per output token")
    parser.add_argument("--max-running", type=int, default=0, help="concurrent requests served (0 = unbounded)")
    parser.add_argument("--enable-cache-report", action="store_true", help="like SGLang: cached_tokens in usage")
    parser.add_argument("--enable-priority-scheduling", action="store_true", help="like SGLang: admit by priority")
    parser.add_argument("--default-priority-value", type=int, default=None)
    parser.add_argument("--max-total-tokens", type=int, default=215_000, help="the KV pool in tokens")
    parser.add_argument("--preprocess-s", type=float, default=0.0, help="CPU seconds per image before scheduling")
    parser.add_argument("--health-s", type=float, default=0.0, help="seconds /health takes (a real one: >= 1)")
    args, _unknown = parser.parse_known_args()  # tolerate sglang.launch_server flags from the fleet launcher
    sim = SimulatedSGLang(
        args.host,
        args.port,
        model_path=args.model_path,
        latency_s=args.latency,
        per_token_s=args.per_token,
        max_running=args.max_running or None,
        health_s=args.health_s,
        cache_report=args.enable_cache_report,
        priority_scheduling=args.enable_priority_scheduling,
        default_priority=args.default_priority_value,
        max_total_tokens=args.max_total_tokens,
        preprocess_s=args.preprocess_s,
        preprocess_workers=int(os.environ.get("SGLANG_CPU_WORKERS") or os.cpu_count() or 1),
        request_timeout_s=float(os.environ.get("REQUEST_TIMEOUT") or 10),
        # like the real server: untempered logprobs only when its environment says so
        original_logprob=os.environ.get("SGLANG_RETURN_ORIGINAL_LOGPROB", "").lower() in {"1", "true"},
    ).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY {sim.url} gpu={os.environ.get('CUDA_VISIBLE_DEVICES', '-')}", flush=True)
    done.wait()
    sim.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
