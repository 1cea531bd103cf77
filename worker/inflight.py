"""How many jobs a worker holds at once, set from its inference server's own load: no number to tune.

A fixed in-flight count is wrong somewhere: on the H200 with the 7B shape, 32 in flight left 10-14 % of the GPU
idle, and a server that runs 512 at once needs more than 512. What saturates a continuously batching server is a
small queue at the server whenever jobs wait (the running batch is then as full as memory allows), and what keeps
interactive latency bounded is that this queue stays small. So the controller reads the server's queue and
adjusts the one number Celery has for it, the consumer's prefetch count (QoS): messages beyond it stay in Redis,
where other workers can take them (no hoarding).

Every ``period_s`` (``GUARDQ_INFLIGHT_PERIOD_S``) it samples the server (``/v1/loads``: running and waiting
requests; ``/metrics`` of a server with ``--enable-metrics`` as fallback) and, while jobs wait in Redis:

- the queue stayed below ``queue_low`` over the window, the worker uses its whole allowance and most of it is at
  the server (not in its own CPU stages: more would not help then) → grow: double until the server has queued once
  (like TCP's slow start: from 32 to 512 in four steps), by half after that;
- the queue stayed above ``queue_high`` (``max(8, running / 8)``) and this worker has requests there → shrink
  by the excess, at most by half, and only once the previous cut has taken effect (seen on the H200: a worker
  idle while another client flooded the server cut itself to 1 and then had to ramp up again);
- otherwise hold. Several workers on one server each see the same queue, so together they settle in the band; a
  router in front that reports no load leaves the limit where it started.

The limit lives between ``floor`` and the thread pool's size (``GUARDQ_WORKER_CONCURRENCY``, the ceiling).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("guardq.inflight")


@dataclass(frozen=True)
class ServerLoad:
    """One sample of an inference server's scheduler (summed over its data-parallel ranks)."""

    running: int
    waiting: int
    max_running: int | None = None


@dataclass(frozen=True)
class Band:
    """The server queue the controller aims for."""

    queue_low: int = 2
    queue_high_min: int = 8
    queue_high_share: float = 0.125  # of the running batch

    def high(self, running: int) -> int:
        return max(self.queue_high_min, int(running * self.queue_high_share))


class InflightController:
    """Decides the limit; ``apply`` hands each new limit to whoever enforces it (the consumer's QoS)."""

    def __init__(
        self,
        *,
        start: int,
        floor: int,
        ceiling: int,
        read_load: Callable[[], ServerLoad | None],
        backlog: Callable[[], int],
        holding: Callable[[], int],
        at_server: Callable[[], int],
        apply: Callable[[int], None],
        band: Band | None = None,
        window: int = 3,
    ) -> None:
        self.floor = max(1, floor)
        self.ceiling = max(self.floor, ceiling)
        self.limit = min(self.ceiling, max(self.floor, start))
        self._read_load = read_load
        self._backlog = backlog
        self._holding = holding
        self._at_server = at_server
        self.apply = apply  # replaced when the consumer restarts (a new QoS object after a broker reconnect)
        self._band = band or Band()
        self._samples: deque[tuple[ServerLoad, int]] = deque(maxlen=window)  # with this worker's count there
        self.last_load: ServerLoad | None = None
        # Doubling until the server first queues: the ramp at half a limit per step cost P1 3 s of a 21 s run at
        # C = 128 (0.88 of a direct client); past the first queue the server's size is known, growth is by half.
        self._slow_start = True

    def sample(self) -> None:
        """Record one load sample (called a few times per decision, so a momentary dip is not a trend)."""
        load = self._read_load()
        if load is not None:
            self._samples.append((load, self._at_server()))
            self.last_load = load

    @staticmethod
    def _queue(load: ServerLoad, there: int) -> int:
        """The server's queue as this worker's requests see it: its scheduler's waiting requests, or more when more of
        this worker's requests are at the server than it runs. The rest wait before the scheduler, in the image
        preprocessing SGLang 0.5.17 runs on a CPU process pool and leaves out of ``/v1/loads`` (on the H200,
        OneVision's native tiling made it the bottleneck: 481 of 1,740 requests timed out there). A lower bound
        with several workers on one server (the others' requests fill running and waiting)."""
        return max(load.waiting, there - load.running)

    def decide(self) -> int:
        """One control step from the samples since the last one; returns the (possibly new) limit."""
        pairs = list(self._samples)
        self._samples.clear()
        if not pairs:
            return self.limit  # no load signal (a router, an older server): keep the limit
        samples = [load for load, _ in pairs]
        queues = [self._queue(load, there) for load, there in pairs]
        # A short queue says the limit is what keeps the server short only while most of the allowance was at the
        # server: one seen while the worker's jobs were still in its own CPU stages (its first second, a burst of
        # fetches) is no reason to grow; growing on it overshot by half a limit on a loaded two-core box.
        full = [queue for queue, (_, there) in zip(queues, pairs, strict=True) if there >= 0.75 * self.limit]
        running = max(s.running for s in samples)
        peak_queue, least_queue = max(queues), min(queues)
        high = self._band.high(running)
        holding = self._holding()
        new = self.limit
        if least_queue >= self._band.queue_low:  # queued over the whole window: not a request in transit
            self._slow_start = False
        if least_queue > high:
            # Too deep: give back the excess, at most half, and only once the last cut has taken effect (the jobs
            # already at the server stay there until they finish; cutting again for them would starve it). A worker
            # with nothing at the server is not the cause (another worker, another client): it keeps its limit.
            if holding <= self.limit and self._at_server() > 0:
                new = max(self.limit // 2, self.limit - (least_queue - high))
        elif (
            full
            and max(full) < self._band.queue_low
            and self._backlog() > 0
            and holding >= self.limit - 1
            # Grow only if the limit is what keeps the server short: most of what the worker holds must be at the
            # server, not stuck in its own CPU stages (more would not help then).
            and self._at_server() >= 0.75 * self.limit
        ):
            new = self.limit + (self.limit if self._slow_start else max(1, self.limit // 2))
        new = min(self.ceiling, max(self.floor, new))
        if new != self.limit:
            log.debug(
                "inflight_limit", limit=new, previous=self.limit, running=running, queue=[least_queue, peak_queue]
            )
            self.limit = new
            self.apply(new)
        return self.limit


class ControlLoop:
    """Runs the controller on a daemon thread: ``samples_per_step`` samples per ``period_s`` decision."""

    def __init__(self, controller: InflightController, *, period_s: float, samples_per_step: int = 3) -> None:
        self.controller = controller
        self._period = period_s
        self._samples = max(1, samples_per_step)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guardq-inflight", daemon=True)

    def start(self) -> ControlLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        tick = self._period / self._samples
        while not self._stop.is_set():
            for _ in range(self._samples):
                try:
                    self.controller.sample()
                except Exception as exc:  # a probe failure must never stop the control loop
                    log.debug("inflight_sample_failed", error=repr(exc))
                if self._stop.wait(tick):
                    return
            try:
                self.controller.decide()
            except Exception as exc:
                log.warning("inflight_step_failed", error=repr(exc))


class PrefetchLimit:
    """Celery's consumer QoS as the enforcement point: the prefetch count is the jobs the worker holds at once.

    Celery itself moves the same value (ETA tasks add one while they wait), so changes are applied as deltas
    under the QoS mutex; the consumer loop sends ``basic_qos`` when it sees the value changed, on the turn ``wake``
    starts (``worker.kombu_compat.wake_consumer``) when the limit grows.
    """

    def __init__(self, qos: Any, initial: int, wake: Callable[[], None] | None = None) -> None:
        self._qos = qos
        self._current = initial
        self._wake = wake
        with qos._mutex:
            qos.value = max(1, initial)
            qos.update()

    def __call__(self, limit: int) -> None:
        with self._qos._mutex:
            delta = limit - self._current
            self._qos.value = max(1, self._qos.value + delta)
            self._current = limit
        if delta > 0 and self._wake is not None:
            self._wake()  # the loop applies the new count and fetches on this turn, not at its next timer
