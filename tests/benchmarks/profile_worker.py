"""Profile one worker process on a P3/P4-style run: CPU per job (user/system) and, with py-spy, where it goes.

    python -m tests.benchmarks.profile_worker --mode unique --jobs 3000 --py-spy /tmp/prof.txt
    python -m tests.benchmarks.profile_worker --mode duplicate --jobs 3000

``--py-spy`` records GIL-holding samples (``py-spy record --gil --format raw``) and prints the heaviest frames of
guardq, Celery/kombu and redis-py, which is how the figures in docs/performance.md were found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from producers.broker import JobQueue
from schemas.job import ModerationJob
from tests.benchmarks.harness import run_jobs, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, start_server, upload_jobs


def cpu_split(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def summarise(raw: Path, top: int = 40) -> None:
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():  # py-spy's raw output can end a sample's stack with an empty frame
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] += int(count)
    print(f"{total} GIL-holding samples; inclusive share of the heaviest frames:")
    for frame, count in inclusive.most_common(top * 3)[:top]:
        print(f"{count / total * 100:5.1f}%  {frame[:130]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["unique", "duplicate"], default="unique")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--py-spy", type=Path, default=None, help="write raw py-spy samples here and summarise")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guardq-profile-") as tmp:
        workdir = Path(tmp)
        with services(workdir) as svc:
            sim = start_server(max_running=None)
            env = svc.env(sim.url, GUARDQ_WORKER_CONCURRENCY=str(args.concurrency))
            settings = settings_from(env)
            queue = JobQueue(settings)
            [first] = upload_jobs(settings, distinct_jpegs(1, seed=42))
            if args.mode == "duplicate":
                jobs = [ModerationJob(image=first.image) for _ in range(args.jobs)]
            else:
                jobs = upload_jobs(settings, distinct_jpegs(args.jobs, seed=5))
            with worker(env, workdir, name="profile") as service:
                run_jobs(queue, [first], 60)
                pid = service.proc.pid
                user0, sys0 = cpu_split(pid)
                spy = None
                if args.py_spy is not None:
                    binary = shutil.which("py-spy") or "py-spy"
                    spy = subprocess.Popen(
                        [binary, "record", "--pid", str(pid), "--duration", "10", "--format", "raw", "--gil",
                         "--nonblocking", "--rate", "250", "-o", str(args.py_spy)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                wall, seen = run_jobs(queue, jobs, 600)
                user1, sys1 = cpu_split(pid)
                if spy is not None:
                    spy.wait()
            queue.close()
            sim.stop()
    print(
        f"{args.mode}: {seen} jobs in {wall:.1f} s = {seen / wall:.0f} jobs/s; worker CPU per job: "
        f"user {1000 * (user1 - user0) / seen:.2f} ms, system {1000 * (sys1 - sys0) / seen:.2f} ms"
    )
    if args.py_spy is not None:
        summarise(args.py_spy)


if __name__ == "__main__":
    main()
