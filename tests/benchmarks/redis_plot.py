"""Draw the Redis memory curves of ``make bench`` (``bench-results/redis-curve-<mode>.json``) into docs/scale-memory.png.

``python -m tests.benchmarks.redis_plot`` — one panel per mode: Redis memory without the verdict stream, the
stream's own memory, and the queue depth (the backpressure cap), against jobs finished.
"""

from __future__ import annotations

import json
import sys

from tests.benchmarks.harness import RESULTS_DIR
from tests.services.procs import ROOT

OUT = ROOT / "docs" / "scale-memory.png"


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in sorted(RESULTS_DIR.glob("redis-curve-*.json"))]
    if not runs:
        print("no bench-results/redis-curve-*.json: run `make bench BENCH=state` first", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        samples, base = run["samples"], run["base"]
        done = [s["done"] for s in samples]
        held = [(s["used_memory"] - s["stream"] - base["used_memory"] + base["stream"]) / 2**20 for s in samples]
        stream = [(s["stream"] - base["stream"]) / 2**20 for s in samples]
        ax.plot(done, held, label="Redis without the stream (MiB)")
        ax.plot(done, stream, label="verdict stream (MiB)", linestyle="--")
        ax.set_xlabel("jobs finished")
        ax.set_ylabel("MiB above the start")
        ax.set_title(f"{run['mode']}: {run['n']:,} jobs, one worker, instant test server")
        depth = ax.twinx()
        depth.plot(done, [s["depth"] for s in samples], color="grey", alpha=0.4, label="queue depth")
        depth.set_ylabel("jobs waiting (backpressure cap 5,000)")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    OUT.write_bytes(b"")
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
