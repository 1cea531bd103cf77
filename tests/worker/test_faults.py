"""A worker fault pauses consumption, not the job: the latch's rules (unit tests, a fake clock)."""

from __future__ import annotations

from schemas.errors import WorkerFault
from worker.faults import FaultLatch, FaultState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def latch(clock: Clock, changes: list[FaultState | None] | None = None) -> FaultLatch:
    return FaultLatch(pause_s=30, pause_max_s=100, clock=clock, on_change=None if changes is None else changes.append)


def test_a_fault_holds_consumption_for_the_pause_then_lets_a_probe_through() -> None:
    clock = Clock()
    faults = latch(clock)
    assert not faults.holding()
    faults.report(WorkerFault("S3 refuses this worker (SignatureDoesNotMatch)", cause="s3_credentials"))
    assert faults.holding()
    clock.now += 29.9
    assert faults.holding()
    clock.now += 0.2
    assert not faults.holding()  # the probe: consume again
    assert faults.state is not None and "s3_credentials" == faults.state.cause  # still unhealthy until a job ends


def test_the_other_jobs_in_flight_do_not_extend_the_pause_but_a_failed_probe_doubles_it_up_to_the_cap() -> None:
    clock = Clock()
    faults = latch(clock)
    fault = WorkerFault("404", cause="sglang_not_found")
    first = faults.report(fault)
    for _ in range(31):
        assert first == faults.report(fault)  # 31 more jobs that were in flight: same pause
    pauses = []
    for _ in range(4):
        clock.now = faults.state.paused_until if faults.state else clock.now
        state = faults.report(fault)
        pauses.append(state.paused_until - clock.now)
    assert [60, 100, 100, 100] == pauses
    assert 5 == faults.state.episodes if faults.state else None


def test_a_job_that_ends_normally_clears_the_fault_and_resets_the_pause() -> None:
    clock = Clock()
    changes: list[FaultState | None] = []
    faults = latch(clock, changes)
    faults.report(WorkerFault("401", cause="sglang_unauthorized"))
    clock.now += 31
    faults.report(WorkerFault("401", cause="sglang_unauthorized"))  # probe failed: 60 s
    clock.now += 61
    faults.job_ended_normally()
    assert faults.state is None and not faults.holding()
    state = faults.report(WorkerFault("401", cause="sglang_unauthorized"))
    assert 30 == state.paused_until - clock.now
    assert ["sglang_unauthorized", "sglang_unauthorized", None, "sglang_unauthorized"] == [
        c.cause if c else None for c in changes
    ]
