"""Run one backfill: walk the keys, filter them, enqueue with backpressure, checkpoint, report progress.

Exactly-once enqueue: every job's id is ``uuid5(backfill id, bucket/key[?version])``, and jobs go out in batches
(up to ``BATCH`` jobs, never more than the backpressure gate allows), each batch in one Redis transaction with the
checkpoint that covers it: the jobs' records and messages and the cursor (last key or inventory position, and the
counters) land together or not at all. A run that dies anywhere resumes after the last batch that landed and sends
nothing twice. Should a duplicate message still appear (a worker restoring one it held when it died), it carries
the same job id and the worker's terminal guard makes it a no-op: one event per job either way.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.client import Pipeline

from producers.backfill.checkpoint import BackfillStore, RunLease
from producers.backfill.manifest import inventory_pages, read_manifest
from producers.backfill.sources import SKIP_INCLUDE, SKIP_SIZE, ObjectEntry, list_pages, skip_reason
from producers.backfill.tally import tally_step
from producers.backfill.throttle import Backpressure, Stopped
from producers.broker import JobQueue
from schemas.backfill import BackfillRecord
from schemas.job import ImageRef, ModerationJob, Priority

_JOB_NAMESPACE = uuid.UUID("0d6f4a39-5c1e-4f7b-9a53-2b8e7c1d9f60")
_TALLY_EVERY_S = 2.0
BATCH = 250  # jobs per transaction: ~10x fewer round trips than one per job, still a few ms per transaction
# What the run loop walks: ObjectEntry here; a dataset's rows in producers/dataset/runner.py (a subclass).
Entry = Any


def backfill_job_id(backfill_id: str, entry: ObjectEntry) -> str:
    """The same object in the same backfill always gets the same job id."""
    name = f"{backfill_id}\n{entry.bucket}/{entry.key}"
    if entry.version_id:
        name += f"?versionId={entry.version_id}"
    return uuid.uuid5(_JOB_NAMESPACE, name).hex


@dataclass
class Snapshot:
    """What a progress reporter shows."""

    backfill_id: str
    listed: int
    enqueued: int
    skipped: int
    rate: float  # jobs enqueued per second by this run
    depth: int
    max_pending: int
    waiting: bool
    dry_run: bool


class Reporter(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...


@dataclass
class RunStats:
    enqueued_this_run: int = 0
    seconds: float = 0.0
    peak_depth: int = 0
    waits: int = 0

    @property
    def rate(self) -> float:
        return self.enqueued_this_run / self.seconds if self.seconds > 0 else 0.0


class BackfillRunner:
    """Drives one backfill record to the end (or to a stop request, which it checkpoints)."""

    def __init__(
        self,
        record: BackfillRecord,
        *,
        s3: Any,
        queue: JobQueue | None,
        store: BackfillStore | None,
        lease: RunLease | None,
        max_pending: int,
        page_size: int,
        stop: threading.Event,
        reporter: Reporter,
        report_every_s: float = 0.5,
    ) -> None:
        self.record = record
        self._s3 = s3
        self._queue = queue  # None: dry run (nothing sent, nothing written)
        self._store = store
        self._lease = lease
        self._page_size = page_size
        self._stop = stop
        self._reporter = reporter
        self._report_every = report_every_s
        self._batch: list[ModerationJob] = []  # admitted by the gate, counted in progress, not yet sent
        self._committed = record.progress.cursor_fields()  # the cursor as Redis holds it
        depth = (lambda: queue.depth(record.options.queue)) if queue is not None else (lambda: 0)
        self.gate = Backpressure(depth, max_pending, stop, on_wait=self._tick)
        self.stats = RunStats()
        self._started = time.monotonic()
        self._last_report = self._last_refresh = 0.0

    @property
    def dry_run(self) -> bool:
        return self._queue is None

    def _pages(self) -> Iterator[Sequence[Entry]]:
        opts, progress = self.record.options, self.record.progress
        if opts.mode == "manifest":
            manifest = read_manifest(self._s3, opts.source)
            start = (progress.manifest_file, progress.manifest_row)
            return inventory_pages(self._s3, manifest, page_size=self._page_size, start=start)
        return list_pages(self._s3, opts.bucket, opts.prefix, page_size=self._page_size, start_after=progress.last_key)

    def _job(self, entry: Entry) -> ModerationJob:
        opts = self.record.options
        return ModerationJob(
            job_id=backfill_job_id(self.record.backfill_id, entry),
            image=ImageRef(
                uri=f"s3://{entry.bucket}/{entry.key}", version_id=entry.version_id, etag=entry.etag, size=entry.size
            ),
            model=opts.model,
            policy_ref=opts.policy_ref,
            tenant=opts.tenant,
            metadata=opts.metadata,
            priority=Priority.BULK,
            backfill_id=self.record.backfill_id,
        )

    def _advance(self, entry: ObjectEntry) -> None:
        progress = self.record.progress
        progress.last_key = entry.key
        if entry.position is not None:
            progress.manifest_file, progress.manifest_row = entry.position

    def _tick(self) -> None:
        """Between jobs and while waiting at the cap: keep the display fresh and the run lease alive."""
        now = time.monotonic()
        if now - self._last_report >= self._report_every:
            self._last_report = now
            self._report(self._started)
        if self._lease is not None and now - self._last_refresh >= self._lease.ttl_s / 3:
            self._last_refresh = now
            self._lease.refresh()

    def run(self) -> RunStats:
        """Enqueue every remaining key; raises :class:`Stopped` when asked to stop (the caller checkpoints)."""
        start = self._started = time.monotonic()
        last_tally = 0.0
        if not self.dry_run:
            self.gate.measure()
        try:
            for page in self._pages():
                for entry in page:
                    if self._stop.is_set():
                        raise Stopped
                    self._take(entry)
                    if len(self._batch) >= BATCH:
                        self._flush()
                    self._tick()
                self._flush()  # the rest of the page, and a checkpoint past its skipped keys
                if not self.dry_run:
                    self.gate.measure()  # fresh depth for the display, and headroom re-based once per page
                if time.monotonic() - last_tally >= _TALLY_EVERY_S and not self.dry_run:
                    last_tally = time.monotonic()
                    self._tally()
        except BaseException:
            self._settle()
            raise
        finally:
            self.stats.seconds = time.monotonic() - start
            self.stats.peak_depth = self.gate.peak_depth
            self.stats.waits = self.gate.waits
            self._report(start)
        return self.stats

    def _take(self, entry: Entry) -> None:
        """Skip the entry (counted by reason) or admit its job; either way the cursor moves past it."""
        progress = self.record.progress
        reason = skip_reason(entry, self.record.options.include, self.record.options.max_bytes)
        if reason is not None:
            self._count_skip(reason)
        elif self._queue is not None:
            self._admit(entry)  # may raise Stopped: nothing is counted for this entry yet
        else:
            self.stats.enqueued_this_run += 1  # a dry run counts what it would send
        progress.listed += 1
        progress.enqueued += int(reason is None)
        self._advance(entry)

    def _admit(self, entry: Entry) -> None:
        """Take a slot from the gate for the entry's job and hold the job for the next batch; the jobs held so far
        go out first whenever the gate is about to wait (so the depth it measures includes them)."""
        if not self.gate.has_headroom():
            self._flush()
        self.gate.acquire()
        self._batch.append(self._job(entry))

    def _flush(self) -> None:
        """Send the held jobs and the checkpoint that covers them in one transaction (a dry run sends nothing)."""
        if self._queue is None:
            return
        jobs = self._batch
        also = self._checkpoint if self._store is not None else None
        self._queue.send_many(jobs, queue=self.record.options.queue, also=also)
        self._batch = []  # only once they landed: a failed send is retried by _settle, or rolled back
        self.stats.enqueued_this_run += len(jobs)
        self._committed = self.record.progress.cursor_fields()
        self._landed()

    def _checkpoint(self, pipe: Pipeline[bytes]) -> None:
        """The writes that go into every batch's transaction: the cursor and counters."""
        assert self._store is not None
        self._store.save_cursor(self.record, pipe)

    def _landed(self) -> None:
        """Called once a batch's transaction landed (subclasses drop what it carried)."""

    def _rolled_back(self) -> None:
        """Called when the batch in hand could not be sent at the end of a run (subclasses forget what it carried)."""

    def _settle(self) -> None:
        """On the way out (stop, error): send what is held if Redis still answers; otherwise take the in-memory
        cursor back to the last one that landed, so the final checkpoint claims nothing that was not sent."""
        try:
            self._flush()
        except Exception:
            progress = self.record.progress
            for name, value in self._committed.items():
                setattr(progress, str(name), value)
            self._batch = []
            self._rolled_back()

    def _count_skip(self, reason: str) -> None:
        progress = self.record.progress
        if reason == SKIP_INCLUDE:
            progress.skipped_include += 1
        elif reason == SKIP_SIZE:
            progress.skipped_size += 1
        else:
            progress.skipped_other += 1

    def _tally(self) -> None:
        if self._queue is not None:
            tally_step(self._queue.redis)

    def _report(self, start: float) -> None:
        progress = self.record.progress
        elapsed = max(time.monotonic() - start, 1e-9)
        self._reporter.update(
            Snapshot(
                backfill_id=self.record.backfill_id,
                listed=progress.listed,
                enqueued=progress.enqueued,
                skipped=progress.skipped,
                rate=self.stats.enqueued_this_run / elapsed,
                depth=self.gate.depth_bound,
                max_pending=self.gate.max_pending,
                waiting=self.gate.waits > 0 and self.gate.last_depth >= self.gate.max_pending,
                dry_run=self.dry_run,
            )
        )
