"""The test server's image preprocessing: SGLang 0.5.17's llava processor runs it before the scheduler sees a request.

Each image is preprocessed on a CPU process pool (``SGLANG_CPU_WORKERS`` processes, default the machine's cores) and
awaited with ``REQUEST_TIMEOUT`` seconds (default 10) counted from submission, queue wait included. Past that the
request fails with HTTP 500 ``Internal server error: `` (``str(TimeoutError())`` is empty) while its task still runs
to the end in the pool, holding a worker. Requests waiting here are in neither ``num_running_reqs`` nor
``num_queue_reqs``. On the H200, OneVision at native detail (ten 384-px tiles per photo) made this the bottleneck:
with the default 10 s, 481 of 1,740 requests at 64-256 in flight got that 500.
"""

from __future__ import annotations

import heapq
import threading
import time

TIMEOUT_ERROR = {
    "object": "error",
    "message": "Internal server error: ",
    "type": "InternalServerError",
    "param": None,
    "code": 500,
}


class PreprocessPool:
    """A pool of ``workers`` taking ``cost_s`` per image, first come first served; owns its waiting counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free_at: list[float] = []  # a heap: when each pool process is next free
        self.inside = 0  # requests submitted and not yet answered (waiting for a process or being processed)
        self.peak_inside = 0
        self.timed_out = 0

    def run(self, cost_s: float, *, workers: int, timeout_s: float, stopping: threading.Event) -> bool:
        """Preprocess one image; False when the request's timeout passed first (the pool process stays busy)."""
        now = time.monotonic()
        with self._lock:
            while len(self._free_at) < workers:
                heapq.heappush(self._free_at, now)
            end = max(now, heapq.heappop(self._free_at)) + cost_s
            heapq.heappush(self._free_at, end)
            self.inside += 1
            self.peak_inside = max(self.peak_inside, self.inside)
        try:
            in_time = end - now <= timeout_s
            stopping.wait(end - now if in_time else timeout_s)
            if not in_time:
                with self._lock:
                    self.timed_out += 1
            return in_time
        finally:
            with self._lock:
                self.inside -= 1
