"""P4: duplicates cost no GPU call — jobs/s for repeated images with a warm verdict cache."""

from __future__ import annotations

from pathlib import Path

from producers.broker import JobQueue
from schemas.job import ModerationJob
from tests.benchmarks.harness import Figure, proc_cpu_s, run_jobs, services, settings_from, worker
from tests.benchmarks.workload import distinct_jpegs, start_server, upload_jobs


def run(workdir: Path, n: int = 2000, concurrency: int = 16) -> list[Figure]:
    with services(workdir) as svc:
        sim = start_server(max_running=None, latency_s=0.2)
        try:
            env = svc.env(sim.url, GUARDQ_WORKER_CONCURRENCY=str(concurrency))
            settings = settings_from(env)
            queue = JobQueue(settings)
            [first] = upload_jobs(settings, distinct_jpegs(1, seed=42))
            duplicates = [ModerationJob(image=first.image) for _ in range(n)]
            with worker(env, workdir, name="p4") as service:
                run_jobs(queue, [first], 60)
                calls_before = len(sim.chat_requests())
                cpu0 = proc_cpu_s(service.proc.pid)
                wall, seen = run_jobs(queue, duplicates, 300)
                cpu = proc_cpu_s(service.proc.pid) - cpu0
                calls = len(sim.chat_requests()) - calls_before
            queue.close()
        finally:
            sim.stop()
    assert seen == n
    return [
        Figure("P4", "inference calls for duplicates", calls, "calls", target=0, higher_is_better=False, note=f"n={n}"),
        Figure(
            "P4",
            "duplicate jobs/s (one worker)",
            n / wall,
            "jobs/s",
            target=2000.0,
            note=f"{cpu / n * 1000:.2f} ms worker CPU/job",
        ),
    ]
