"""Keep a worker consuming only while its inference server is ready.

A thread probes the server (``/ready``, ``/health`` on older SGLang) every ``GUARDQ_SERVER_WATCH_INTERVAL_S``.
After ``fail_after`` failed probes in a row the worker stops taking jobs: Celery remote control
``cancel_consumer`` for each of its queues, sent to this node only. The first good probe adds the queues back with
``add_consumer``, interactive first, so the Redis transport's ``priority`` order survives the round trip.

Why remote control rather than stopping the worker process: it works wherever the server runs (launched by
``guardq worker --gpus``, a compose service, a Kubernetes sidecar), the worker stays warm (HTTP/Redis pools,
metrics endpoint, registry heartbeat keep reporting "paused"), and nothing it holds is lost: jobs already running
fail fast as transient and go back to the queue as retries for healthy GPUs; jobs that start while the server is
known down are requeued untouched (see ``worker.tasks``); a pause also survives broker reconnects, since Celery
rebuilds its consumer from the deselected queue set.

The same switch serves ``worker.faults``: while a configuration-class fault holds (``hold()`` is true) the worker
stays paused even with its server up, and resumes on the first probe after the hold ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("guardq.serverwatch")


@dataclass
class ServerHealth:
    """Debounced readiness: ``fail_after`` failed probes in a row mark the server down, one success marks it up."""

    fail_after: int = 2
    up: bool = True
    failures: int = 0

    def observe(self, ok: bool) -> bool:
        if ok:
            self.failures = 0
            self.up = True
        else:
            self.failures += 1
            if self.failures >= self.fail_after:
                self.up = False
        return self.up


class RemoteConsumerSwitch:
    """Pause/resume one worker node's queues through Celery remote control (pidbox broadcast to that node)."""

    def __init__(self, app: Any, node: str, queues: Sequence[str], *, timeout_s: float = 2.0) -> None:
        self._app = app
        self._node = node
        self._queues = list(queues)
        self._timeout = timeout_s

    def _send(self, command: str, queue: str) -> bool:
        replies = getattr(self._app.control, command)(
            queue, destination=[self._node], reply=True, timeout=self._timeout
        )
        return any(self._node in reply for reply in replies or [])

    def _each(self, command: str) -> bool:
        confirmed = [self._send(command, queue) for queue in self._queues]  # every queue, even after a miss
        return all(confirmed)

    def pause(self) -> bool:
        """Stop consuming every queue; True once the node confirmed each."""
        return self._each("cancel_consumer")

    def resume(self) -> bool:
        """Consume the queues again, in their priority order; True once the node confirmed each."""
        return self._each("add_consumer")


class ServerWatch:
    """The probe loop; ``consuming`` is what the worker last confirmed, ``up`` what the probes say."""

    def __init__(
        self,
        probe: Callable[[], bool],
        switch: RemoteConsumerSwitch,
        *,
        interval_s: float,
        fail_after: int = 2,
        on_change: Callable[[bool, bool], None] | None = None,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self._probe = probe
        self._hold = hold
        self._switch = switch
        self._interval = interval_s
        self._health = ServerHealth(fail_after=fail_after)
        self._on_change = on_change
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._up = threading.Event()
        self._up.set()
        self.consuming = True
        self._thread = threading.Thread(target=self._loop, name="guardq-serverwatch", daemon=True)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def start(self) -> ServerWatch:
        self._thread.start()
        return self

    def halt(self) -> None:
        """Stop probing and switching without waiting (safe in a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        self.halt()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def poke(self) -> None:
        """Probe now (a job just failed to reach the server)."""
        self._wake.set()

    def wait_up(self, timeout_s: float) -> bool:
        return self._up.wait(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._wake.wait(self._interval)
            self._wake.clear()

    def check(self) -> None:
        """One probe, then bring the consumer in line with it."""
        try:
            ok = self._probe()
        except Exception:  # a probe bug must not kill the watch
            log.exception("server_probe_error")
            ok = False
        was_up = self.up
        up = self._health.observe(ok)
        if up:
            self._up.set()
        else:
            self._up.clear()
        if up != was_up:
            log.warning("server_up" if up else "server_down", failures=self._health.failures)
        want = up and not (self._hold is not None and self._hold())
        if want != self.consuming and not self._stop.is_set():
            self._apply(want)
        if self._on_change is not None:
            self._on_change(up, self.consuming)

    def _apply(self, consume: bool) -> None:
        try:
            done = self._switch.resume() if consume else self._switch.pause()
        except Exception as exc:  # broker trouble: try again on the next probe
            log.error("consumer_switch_failed", consume=consume, error=repr(exc))
            return
        if done:
            self.consuming = consume
            log.warning("consuming_resumed" if consume else "consuming_paused")
        else:
            log.error("consumer_switch_unconfirmed", consume=consume)
