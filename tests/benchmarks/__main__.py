"""``make bench``: run the benchmarks, print the table with targets and PASS/MISS, write bench-results/*.json.

Usage: ``python -m tests.benchmarks [p1 p2 p3 backfill p4 memory frames dataset state]`` (default: all).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.benchmarks.harness import Figure, machine, table, write_results


def main(argv: list[str]) -> int:
    from tests.benchmarks import (
        dataset,
        memory,
        p1_saturation,
        p2_image_path,
        p3_backfill,
        p3_bookkeeping,
        p4_cache,
        p5_frames,
        redis_state,
    )

    benches = {
        "p1": p1_saturation.run,
        "p2": p2_image_path.run,
        "p3": p3_bookkeeping.run,
        "backfill": p3_backfill.run,
        "p4": p4_cache.run,
        "memory": memory.run,
        "frames": p5_frames.run,
        "dataset": dataset.run,
        "state": redis_state.run,  # Redis bytes per job, the 100k-job memory curve, reconciler sweep cost
    }
    chosen = argv or list(benches)
    unknown = [b for b in chosen if b not in benches]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(benches)}", file=sys.stderr)
        return 2
    figures: list[Figure] = []
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"guardq-bench-{name}-") as tmp:
            print(f"[bench] running {name} ...", file=sys.stderr, flush=True)
            figures += benches[name](Path(tmp))
    print(f"\nmachine: {machine()}\n")
    print(table(figures))
    print(f"\nresults: {write_results(figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
