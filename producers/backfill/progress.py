"""Progress of a running backfill: a rich live line in a terminal, periodic structlog lines otherwise."""

from __future__ import annotations

import time
from types import TracebackType

import structlog
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from producers.backfill.runner import Snapshot


class RichReporter:
    """A spinner with listed / enqueued / skipped / rate / queue depth, refreshed in place (stderr)."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.fields[line]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("backfill", line="listing…", total=None)

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, snapshot: Snapshot) -> None:
        verb = "would enqueue" if snapshot.dry_run else "enqueued"
        line = (
            f"listed {snapshot.listed:,} · {verb} {snapshot.enqueued:,} · skipped {snapshot.skipped:,} · "
            f"{snapshot.rate:,.0f}/s"
        )
        if not snapshot.dry_run:
            line += f" · queue {snapshot.depth:,}/{snapshot.max_pending:,}"
            if snapshot.waiting:
                line += " [yellow](waiting for workers)[/yellow]"
        self._progress.update(self._task, description=snapshot.backfill_id, line=line)


class LogReporter:
    """One ``backfill_progress`` log line every ``interval_s`` seconds (for logs, CI, pipes)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval = interval_s
        self._last = 0.0
        self._log = structlog.get_logger("guardq.backfill")

    def __enter__(self) -> LogReporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        self._log.info(
            "backfill_progress",
            backfill_id=snapshot.backfill_id,
            listed=snapshot.listed,
            enqueued=snapshot.enqueued,
            skipped=snapshot.skipped,
            rate=round(snapshot.rate, 1),
            queue_depth=snapshot.depth,
            max_pending=snapshot.max_pending,
            waiting=snapshot.waiting,
            dry_run=snapshot.dry_run,
        )
