"""A worker that sees configuration-class failures stops taking jobs, says why, and leaves the jobs queued.

Bad S3 credentials, a skewed clock, an SGLang URL that is not SGLang or a wrong API key, a Redis refusing writes:
every job would fail the same way, so one broken worker would turn a queue into failed events at full speed. Such
failures arrive as :class:`schemas.errors.WorkerFault` (see ``worker.retry.reclassify`` and
``worker.redisfaults``). The task hands the job back to the queue untouched (no retry spent, no event) and reports
the fault here; the worker's consumer switch (``worker.serverwatch``) pauses consumption while :meth:`holding`.

After ``GUARDQ_FAULT_PAUSE_S`` the worker consumes again, as a probe: the first job that ends normally clears the
fault; another fault pauses it again, each time twice as long, up to ``GUARDQ_FAULT_PAUSE_MAX_S``. Credentials or
a clock can come right without a restart (rotated role credentials, NTP), and a fixed deployment restarts anyway.

While a fault stands the worker reports itself unhealthy: a log line ``worker_unhealthy`` naming the cause and the
message, the metrics ``guardq_worker_healthy`` (0) and ``guardq_worker_fault{cause}`` (1), and the fields
``worker_health``, ``fault`` and ``fault_message`` of its fleet registry hash (``guardq fleet status``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from schemas.errors import WorkerFault

log = structlog.get_logger("guardq.faults")


@dataclass(frozen=True)
class FaultState:
    cause: str
    message: str
    since: float
    paused_until: float
    episodes: int


class FaultLatch:
    """Thread-safe; ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(
        self,
        *,
        pause_s: float,
        pause_max_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[FaultState | None], None] | None = None,
    ) -> None:
        self._pause_s = pause_s
        self._pause_max_s = max(pause_s, pause_max_s)
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state: FaultState | None = None
        self._pause = pause_s

    def listen(self, on_change: Callable[[FaultState | None], None]) -> None:
        """Call ``on_change`` with the new state whenever a fault starts, re-trips or clears."""
        self._on_change = on_change

    @property
    def state(self) -> FaultState | None:
        return self._state

    def holding(self) -> bool:
        """True while consumption must stay paused."""
        state = self._state
        return state is not None and self._clock() < state.paused_until

    def report(self, fault: WorkerFault) -> FaultState:
        """A job hit a configuration-class failure. Faults during a pause (the other jobs in flight) do not extend
        it; the first one after a pause (the probe failed) doubles it."""
        now = self._clock()
        with self._lock:
            state = self._state
            if state is not None and now < state.paused_until:
                return state
            if state is None:
                self._pause = self._pause_s
                since, episodes = now, 1
            else:
                self._pause = min(self._pause * 2, self._pause_max_s)
                since, episodes = state.since, state.episodes + 1
            self._state = FaultState(fault.cause, fault.message, since, now + self._pause, episodes)
            new = self._state
        log.error(
            "worker_unhealthy",
            cause=fault.cause,
            message=fault.message,
            paused_s=round(self._pause, 1),
            episode=new.episodes,
            note="jobs are left queued for healthy workers; consumption resumes after the pause to try again",
        )
        if self._on_change is not None:
            self._on_change(new)
        return new

    def job_ended_normally(self) -> None:
        """A job completed or failed for reasons of its own: whatever was wrong with this worker is fixed."""
        if self._state is None:
            return
        with self._lock:
            state, self._state = self._state, None
            self._pause = self._pause_s
        if state is not None:
            log.warning("worker_healthy", cause_cleared=state.cause, unhealthy_s=round(self._clock() - state.since, 1))
            if self._on_change is not None:
                self._on_change(None)


_latch: FaultLatch | None = None
_latch_lock = threading.Lock()


def configure_faults(
    *, pause_s: float, pause_max_s: float, on_change: Callable[[FaultState | None], None] | None = None
) -> FaultLatch:
    """Create this process's latch (first call wins)."""
    global _latch  # noqa: PLW0603 - one latch per worker process
    with _latch_lock:
        if _latch is None:
            _latch = FaultLatch(pause_s=pause_s, pause_max_s=pause_max_s, on_change=on_change)
        return _latch


def get_faults() -> FaultLatch:
    """The process's latch; a default one (settings' pauses) when the worker services have not configured it."""
    if _latch is None:
        from worker.runtime import get_runtime

        settings = get_runtime().settings
        return configure_faults(pause_s=settings.fault_pause_s, pause_max_s=settings.fault_pause_max_s)
    return _latch
