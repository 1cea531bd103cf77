"""The test server's running-request cap and waiting queue, ordered like SGLang 0.5.17's scheduler."""

from __future__ import annotations

import heapq
import threading
from typing import Any


class AdmissionGate:
    """The running-request cap and its waiting queue: first come first served, or by priority (SGLang's
    ``--enable-priority-scheduling``). ``limit`` None admits at once. A freed slot goes straight to the head of the
    queue, so ``waiting`` (what ``num_queue_reqs`` reports) never counts a request whose slot is already free."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._limit: int | None = None
        self._running = 0
        self._queue: list[tuple[int, int]] = []  # a heap of (-priority, arrival)
        self._granted: set[tuple[int, int]] = set()
        self._arrivals = 0
        self.waiting = 0
        self.peak_waiting = 0

    def set_limit(self, limit: int | None) -> None:
        with self._cond:
            self._limit = limit
            self._grant()

    def reset_peak(self) -> None:
        with self._cond:
            self.peak_waiting = self.waiting

    def acquire(self, priority: int) -> None:
        with self._cond:
            if self._limit is None or (self._running < self._limit and not self._queue):
                self._running += 1
                return
            self._arrivals += 1
            ticket = (-priority, self._arrivals)
            heapq.heappush(self._queue, ticket)
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
            while ticket not in self._granted:
                self._cond.wait()
            self._granted.remove(ticket)

    def release(self) -> None:
        with self._cond:
            self._running -= 1
            self._grant()

    def _grant(self) -> None:
        """Hand free slots to the head of the queue (caller holds the condition)."""
        while self._queue and (self._limit is None or self._running < self._limit):
            self._granted.add(heapq.heappop(self._queue))
            self._running += 1
            self.waiting -= 1
        self._cond.notify_all()


def queue_priority(body: dict[str, Any], *, enabled: bool, default: int | None) -> int:
    """A request's place in the waiting queue: its ``priority`` under ``--enable-priority-scheduling`` (else
    ``--default-priority-value``, else the lowest, as 0.5.17 sets it); 0 for every request without the flag."""
    if not enabled:
        return 0
    given = body.get("priority")
    if isinstance(given, int) and not isinstance(given, bool):
        return given
    return default if default is not None else -(2**63)
