"""Start or resume a backfill and always leave a consistent checkpoint, however the run ends.

Ends: ``finished`` (all keys walked), ``interrupted`` (Ctrl-C/SIGTERM), ``failed`` (e.g. the bucket vanished);
the last two can be resumed with ``guardq backfill --resume ID``. A dry run writes nothing at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from producers.backfill.checkpoint import BackfillStore, RunLease
from producers.backfill.runner import BackfillRunner, RunStats
from producers.backfill.throttle import Stopped
from schemas.backfill import BackfillRecord, BackfillState
from schemas.errors import GuardqError

log = structlog.get_logger("guardq.backfill")


@dataclass
class Outcome:
    record: BackfillRecord
    stats: RunStats
    state: BackfillState
    error: str | None = None
    signal_stop: bool = False


def execute(runner: BackfillRunner, store: BackfillStore | None, lease: RunLease | None) -> Outcome:
    """Run to the end; on any exit write the final checkpoint and release the lease."""
    record = runner.record
    state: BackfillState = "finished"
    error: str | None = None
    try:
        runner.run()
    except (Stopped, KeyboardInterrupt):  # KeyboardInterrupt: a second Ctrl-C while stopping
        state = "interrupted"
    except GuardqError as exc:
        state, error = "failed", str(exc)
    except BaseException as exc:
        state, error = "failed", f"{type(exc).__name__}: {exc}"
        _close(record, store, lease, state, error)
        raise
    _close(record, store, lease, state, error)
    return Outcome(record, runner.stats, state, error, signal_stop=state == "interrupted")


def _close(
    record: BackfillRecord,
    store: BackfillStore | None,
    lease: RunLease | None,
    state: BackfillState,
    error: str | None,
) -> None:
    record.progress.state = state
    record.progress.error = error or ""
    if state == "finished":
        record.progress.finished_at = time.time()
    try:
        if store is not None:
            store.save_state(record)
        if lease is not None:
            lease.release()
    except Exception as exc:  # Redis gone: the per-job checkpoints already written still hold
        log.error("backfill_checkpoint_failed", backfill_id=record.backfill_id, error=repr(exc))
