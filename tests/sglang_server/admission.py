"""The test server's running-request cap and waiting queue, ordered like SGLang 0.5.17's scheduler."""

from __future__ import annotations

import heapq
import threading
from typing import Any


class AdmissionGate:
    """The running-request cap and its waiting queue: first come first served, or by priority (SGLang's
    ``--enable-priority-scheduling``). ``limit`` None admits at once. A freed slot goes straight to the head of the
    queue, so ``waiting`` (what ``num_queue_reqs`` reports) never counts a request whose slot is already free; each
    waiter sleeps on an event of its own, so a release wakes one thread, not hundreds (P1 queues 640)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limit: int | None = None
        self._running = 0
        self._queue: list[tuple[int, int]] = []  # a heap of (-priority, arrival)
        self._events: dict[tuple[int, int], threading.Event] = {}
        self._arrivals = 0
        self.waiting = 0
        self.peak_waiting = 0

    def set_limit(self, limit: int | None) -> None:
        with self._lock:
            self._limit = limit
            self._grant()

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_waiting = self.waiting

    def acquire(self, priority: int) -> None:
        with self._lock:
            if self._limit is None or (self._running < self._limit and not self._queue):
                self._running += 1
                return
            self._arrivals += 1
            ticket = (-priority, self._arrivals)
            granted = self._events[ticket] = threading.Event()
            heapq.heappush(self._queue, ticket)
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
        granted.wait()

    def release(self) -> None:
        with self._lock:
            self._running -= 1
            self._grant()

    def _grant(self) -> None:
        """Hand free slots to the head of the queue (caller holds the lock)."""
        while self._queue and (self._limit is None or self._running < self._limit):
            self._events.pop(heapq.heappop(self._queue)).set()
            self._running += 1
            self.waiting -= 1


def queue_priority(body: dict[str, Any], *, enabled: bool, default: int | None) -> int:
    """A request's place in the waiting queue: its ``priority`` under ``--enable-priority-scheduling`` (else
    ``--default-priority-value``, else the lowest, as 0.5.17 sets it); 0 for every request without the flag."""
    if not enabled:
        return 0
    given = body.get("priority")
    if isinstance(given, int) and not isinstance(given, bool):
        return given
    return default if default is not None else -(2**63)
