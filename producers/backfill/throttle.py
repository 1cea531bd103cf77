"""Backpressure: a backfill never lets its queue hold more than ``max_pending`` waiting jobs.

The gate measures the queue depth (``LLEN`` of the Celery list), then lets through exactly the headroom
(``max_pending - depth``) before measuring again; consumers only shrink the list, so with one producer the
depth stays at or under the cap. At the cap it polls with a short backoff (50 ms doubling to 1 s) that a stop
request interrupts at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Stopped(Exception):
    """Raised inside a backfill when Ctrl-C/SIGTERM asked it to stop (it checkpoints, then exits)."""


class Backpressure:
    def __init__(
        self,
        depth: Callable[[], int],
        max_pending: int,
        stop: threading.Event,
        *,
        min_wait_s: float = 0.05,
        max_wait_s: float = 1.0,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self._depth = depth
        self._on_wait = on_wait  # called at every poll while at the cap (progress display, lease refresh)
        self.max_pending = max_pending
        self._stop = stop
        self._min_wait = min_wait_s
        self._max_wait = max_wait_s
        self._headroom = 0
        self._sent_since = 0
        self.last_depth = 0
        self.peak_depth = 0  # upper bound: measured depth plus what was sent since (consumers only shrink it)
        self.waits = 0

    def measure(self) -> int:
        depth = self._depth()
        self.last_depth = depth
        self._sent_since = 0
        self.peak_depth = max(self.peak_depth, depth)
        self._headroom = self.max_pending - depth
        return depth

    @property
    def depth_bound(self) -> int:
        """The queue depth now, at most: the last measurement plus what was sent since."""
        return self.last_depth + self._sent_since

    def has_headroom(self) -> bool:
        """Whether :meth:`acquire` would return without measuring the queue again (or waiting)."""
        return self._headroom > 0

    def acquire(self) -> None:
        """Return when one more job may be sent; raise :class:`Stopped` if a stop was requested meanwhile."""
        wait = self._min_wait
        while self._headroom <= 0:
            if self._stop.is_set():
                raise Stopped
            self.measure()
            if self._headroom > 0:
                break
            self.waits += 1
            if self._on_wait is not None:
                self._on_wait()
            if self._stop.wait(wait):
                raise Stopped
            wait = min(wait * 2, self._max_wait)
        self._headroom -= 1
        self._sent_since += 1
        self.peak_depth = max(self.peak_depth, self.last_depth + self._sent_since)
