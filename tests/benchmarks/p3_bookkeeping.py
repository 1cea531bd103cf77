"""P3: bookkeeping cost per job — one worker process, an instant server, tiny images.

Reports jobs/s of wall time and jobs per worker-CPU-second (the per-core figure, independent of what else runs on
the machine), plus where the worker's CPU goes is left to a profiler run (see docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path

from producers.broker import JobQueue
from tests.benchmarks.harness import Figure, proc_cpu_s, run_jobs, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, start_server, upload_jobs


def run(workdir: Path, n: int = 2000, concurrency: int = 16) -> list[Figure]:
    with services(workdir) as svc:
        sim = start_server(max_running=None)
        try:
            env = svc.env(sim.url, GUARDQ_WORKER_CONCURRENCY=str(concurrency))
            settings = settings_from(env)
            queue = JobQueue(settings)
            warm = upload_jobs(settings, distinct_jpegs(50, seed=99))
            jobs = upload_jobs(settings, distinct_jpegs(n, seed=5))
            with worker(env, workdir, name="p3") as service:
                run_jobs(queue, warm, 60)
                cpu0 = proc_cpu_s(service.proc.pid)
                wall, seen = run_jobs(queue, jobs, 300)
                cpu = proc_cpu_s(service.proc.pid) - cpu0
            queue.close()
        finally:
            sim.stop()
    assert seen == n
    return [
        Figure(
            "P3",
            "jobs per worker CPU-second",
            n / cpu,
            "jobs/s/core",
            target=500.0,
            note=f"{cpu / n * 1000:.2f} ms CPU/job, n={n}",
        ),
        Figure(
            "P3",
            "jobs/s wall (one worker, shared 2-core box)",
            n / wall,
            "jobs/s",
            note="includes producer, Redis and the test server on the same cores",
        ),
    ]
