"""The test server's running-request cap and waiting queue, ordered like SGLang 0.5.17's scheduler."""

from __future__ import annotations

import heapq
import threading
from typing import Any


class AdmissionGate:
    """The running-request cap and its waiting queue: first come first served, or by priority (SGLang's
    ``--enable-priority-scheduling``). ``limit`` None admits at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._limit: int | None = None
        self._running = 0
        self._waiting: list[tuple[int, int]] = []  # a heap of (-priority, arrival)
        self._arrivals = 0

    def set_limit(self, limit: int | None) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def acquire(self, priority: int) -> None:
        with self._cond:
            if self._limit is None:
                self._running += 1
                return
            self._arrivals += 1
            ticket = (-priority, self._arrivals)
            heapq.heappush(self._waiting, ticket)
            while self._limit is not None and (self._running >= self._limit or self._waiting[0] != ticket):
                self._cond.wait()
            # (a limit lifted while waiting: still leave in queue order, so the heap's head is this ticket)
            while self._waiting[0] != ticket:
                self._cond.wait()
            heapq.heappop(self._waiting)  # this ticket: the head
            self._running += 1
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._running -= 1
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
