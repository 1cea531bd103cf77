"""Supervision of a fleet plan: start servers, start each worker once its server is ready, restart what crashes,
drain on SIGTERM.

Per slot with a launched server the states are ``starting`` → ``ready`` → (crash, or ``GUARDQ_SGLANG_LIVENESS_FAILURES``
failed ``/health`` probes in a row, or no readiness within ``GUARDQ_SGLANG_READY_TIMEOUT_S``) ``down`` → after an
exponential backoff ``starting`` again. While a server is down its worker keeps running but takes no jobs: the
worker's own server watch cancels its consumers and adds them back once ``/ready`` answers (see
``worker.serverwatch``), so the launched, compose and Kubernetes set-ups behave the same. A worker that exits is
started again (after its server is ready) with the same backoff.

SIGTERM/SIGINT drain: each worker gets SIGTERM (Celery warm shutdown: stop consuming, finish in-flight jobs, hand
reserved messages back to Redis), the servers stay up until the workers are gone (or ``GUARDQ_FLEET_DRAIN_TIMEOUT_S``
passed; a second signal cuts the wait short), then the servers are stopped. Nothing is lost either way: jobs still
unacknowledged after a forced stop are redelivered by Redis after the visibility timeout.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis
import structlog

from schemas.models import ModelSpec
from schemas.settings import Settings
from worker.fleet.launcher import FleetPlan, Slot
from worker.fleet.procs import Child
from worker.heartbeat import forget_node, write_node
from worker.inference.sglang import SGLangBackend

log = structlog.get_logger("guardq.fleet")
STABLE_AFTER_S = 60.0  # a server ready this long resets its crash backoff
SERVER_STOP_GRACE_S = 30.0
PROBE_TIMEOUT_S = 2.0


def backoff_s(failures: int, base_s: float, max_s: float) -> float:
    """Delay before restart number ``failures`` (1, 2, ...): base, 2x base, 4x base ... capped."""
    return float(min(max_s, base_s * (2 ** max(0, failures - 1))))


@dataclass
class SlotRun:
    """What the supervisor knows about one slot."""

    slot: Slot
    server: Child | None
    worker: Child
    probe: SGLangBackend
    state: str = "starting"
    crashes: int = 0  # consecutive, for the backoff
    restarts: int = 0
    worker_failures: int = 0
    ready_at: float = 0.0
    restart_at: float = 0.0
    worker_start_at: float = 0.0
    next_probe: float = 0.0
    probe_failures: int = 0


class Supervisor:
    def __init__(
        self, plan: FleetPlan, settings: Settings, model: ModelSpec, *, log_dir: Path | None = None, tick_s: float = 0.2
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.tick_s = tick_s
        self.stopping = threading.Event()
        self.forced = threading.Event()
        self.runs = [
            SlotRun(
                slot=slot,
                server=Child(f"server-{slot.index}", slot.server, log_dir=log_dir) if slot.server else None,
                worker=Child(f"worker-{slot.index}", slot.worker, log_dir=log_dir),
                probe=SGLangBackend(settings, model, base_url=slot.url),
                state="starting" if slot.server else "attached",
            )
            for slot in plan.slots
        ]
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self._next_report = 0.0

    # --- signals ------------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping.is_set():
            self.forced.set()
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # --- main loop ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signal_handlers()
        for run in self.runs:
            if run.server is not None:
                self._start_server(run)
        while not self.stopping.is_set():
            now = time.monotonic()
            for run in self.runs:
                self._step(run, now)
            self._report(now)
            self.stopping.wait(self.tick_s)
        self.drain()
        return 0

    def _step(self, run: SlotRun, now: float) -> None:
        if run.server is not None:
            self._step_server(run, now)
        if run.worker_failures and run.worker.alive() and now - run.worker.started_at > STABLE_AFTER_S:
            run.worker_failures = 0
        if run.state in {"ready", "attached"} and not run.worker.alive() and now >= run.worker_start_at:
            if run.worker.starts:
                run.worker_failures += 1
                log.error("worker_exited", node=run.slot.node, returncode=run.worker.returncode)
            run.worker.start()
            run.worker_start_at = now + backoff_s(
                run.worker_failures + 1,
                self.settings.sglang_restart_backoff_s,
                self.settings.sglang_restart_backoff_max_s,
            )
            log.info("worker_started", node=run.slot.node, pid=run.worker.pid, url=run.slot.url)
            self._report(now, force=True)

    def _step_server(self, run: SlotRun, now: float) -> None:
        server = run.server
        assert server is not None
        s = self.settings
        if run.state == "down":
            if now >= run.restart_at:
                run.restarts += 1
                self._start_server(run)
            return
        if not server.alive():
            self._server_down(run, now, f"exited with {server.returncode}")
            return
        if run.state == "starting":
            if now >= run.next_probe:
                run.next_probe = now + 0.25
                if run.probe.ready(timeout_s=PROBE_TIMEOUT_S):
                    run.state, run.ready_at, run.probe_failures = "ready", now, 0
                    run.next_probe = now + s.fleet_probe_interval_s
                    log.info(
                        "server_ready", node=run.slot.node, url=run.slot.url, after_s=round(now - server.started_at, 1)
                    )
                    self._report(now, force=True)
                elif now - server.started_at > s.sglang_ready_timeout_s:
                    self._server_down(run, now, f"not ready after {s.sglang_ready_timeout_s:g}s", kill=True)
            return
        if run.crashes and now - run.ready_at > STABLE_AFTER_S:
            run.crashes = 0
        if now >= run.next_probe:
            run.next_probe = now + s.fleet_probe_interval_s
            run.probe_failures = 0 if run.probe.live(timeout_s=PROBE_TIMEOUT_S) else run.probe_failures + 1
            if run.probe_failures >= s.sglang_liveness_failures:
                self._server_down(run, now, f"/health failed {run.probe_failures} times in a row", kill=True)

    def _start_server(self, run: SlotRun) -> None:
        assert run.server is not None
        run.server.start()
        run.state, run.next_probe = "starting", time.monotonic() + 0.1
        log.info("server_started", node=run.slot.node, pid=run.server.pid, gpus=",".join(run.slot.gpus))
        self._report(time.monotonic(), force=True)

    def _server_down(self, run: SlotRun, now: float, why: str, *, kill: bool = False) -> None:
        assert run.server is not None
        if kill:
            run.server.stop(grace_s=5, sig=signal.SIGKILL)
        run.crashes += 1
        delay = backoff_s(
            run.crashes, self.settings.sglang_restart_backoff_s, self.settings.sglang_restart_backoff_max_s
        )
        run.state, run.restart_at = "down", now + delay
        log.error("server_down", node=run.slot.node, reason=why, restart_in_s=delay, restarts=run.restarts)
        self._report(now, force=True)

    # --- drain --------------------------------------------------------------------------------------------------
    def drain(self) -> None:
        """Workers finish their in-flight jobs first; servers stop last."""
        log.info("fleet_draining", workers=sum(r.worker.alive() for r in self.runs))
        for run in self.runs:
            run.state = "draining" if run.state != "down" else run.state
            run.worker.send(signal.SIGTERM)
        self._report(time.monotonic(), force=True)
        deadline = time.monotonic() + self.settings.fleet_drain_timeout_s
        while any(r.worker.alive() for r in self.runs):
            if self.forced.is_set() or time.monotonic() >= deadline:
                left = [r.slot.node for r in self.runs if r.worker.alive()]
                log.error("drain_cut_short", workers=left, note="unfinished jobs return after the visibility timeout")
                break
            self.forced.wait(0.1)
        for run in self.runs:
            run.worker.stop(grace_s=5, sig=signal.SIGKILL if run.worker.alive() else signal.SIGTERM)
        for run in self.runs:
            if run.server is not None:
                run.server.stop(grace_s=SERVER_STOP_GRACE_S)
            run.state = "stopped"
            run.probe.close()
            try:
                forget_node(self._redis, run.slot.node)
            except redis.RedisError as exc:
                log.warning("registry_unavailable", error=repr(exc))
        self._redis.close()
        log.info("fleet_stopped")

    # --- registry -----------------------------------------------------------------------------------------------
    def _report(self, now: float, *, force: bool = False) -> None:
        """Write each slot's launcher view into the fleet registry (workers add their own fields)."""
        if not force and now < self._next_report:
            return
        self._next_report = now + self.settings.heartbeat_interval_s
        ttl = max(3 * self.settings.heartbeat_interval_s, 5.0)
        for run in self.runs:
            fields: dict[str, object] = {
                "node": run.slot.node,
                "model": self.plan.model.name,
                "gpu": ",".join(run.slot.gpus),
                "sglang_url": run.slot.url,
                "server_state": run.state,
                "server_restarts": run.restarts,
                "server_pid": run.server.pid if run.server is not None else "",
                "worker_restarts": max(0, run.worker.starts - 1),
            }
            try:
                write_node(self._redis, run.slot.node, fields, ttl_s=ttl)
            except redis.RedisError as exc:
                log.warning("registry_unavailable", error=repr(exc))
                return
