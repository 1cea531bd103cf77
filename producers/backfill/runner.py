"""Run one backfill: walk the keys, filter them, enqueue with backpressure, checkpoint, report progress.

Exactly-once enqueue: every job's id is ``uuid5(backfill id, bucket/key[?version])``, and the checkpoint
(last key, or inventory position) of job N is written in the same round trip as job N+1's record, just before
N+1's message, and in full after every page, so a resumed run starts after the last job known to be sent. That
leaves one job in doubt per crash (maybe sent, not yet checkpointed): a resumed run first
asks the broker whether that job id was sent (:meth:`JobQueue.was_sent`) and sends it only if not. Should a
duplicate message still slip through (a worker mid-way between popping it and recording it), it carries the
same job id and the worker's terminal guard makes it a no-op: one event per job either way.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from producers.backfill.checkpoint import BackfillRecord, BackfillStore, RunLease
from producers.backfill.manifest import inventory_pages, read_manifest
from producers.backfill.sources import SKIP_INCLUDE, SKIP_SIZE, ObjectEntry, list_pages, skip_reason
from producers.backfill.tally import tally_step
from producers.backfill.throttle import Backpressure, Stopped
from producers.broker import JobQueue
from schemas.job import ImageRef, ModerationJob, Priority

_JOB_NAMESPACE = uuid.UUID("0d6f4a39-5c1e-4f7b-9a53-2b8e7c1d9f60")
_TALLY_EVERY_S = 2.0


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
        # A resumed run's first job may have been sent just before the crash that stopped the last run.
        self._in_doubt = queue is not None
        depth = (lambda: queue.depth(record.options.queue)) if queue is not None else (lambda: 0)
        self.gate = Backpressure(depth, max_pending, stop, on_wait=self._tick)
        self.stats = RunStats()
        self._started = time.monotonic()
        self._last_report = self._last_refresh = 0.0

    @property
    def dry_run(self) -> bool:
        return self._queue is None

    def _pages(self) -> Iterator[list[ObjectEntry]]:
        opts, progress = self.record.options, self.record.progress
        if opts.mode == "manifest":
            manifest = read_manifest(self._s3, opts.source)
            start = (progress.manifest_file, progress.manifest_row)
            return inventory_pages(self._s3, manifest, page_size=self._page_size, start=start)
        return list_pages(self._s3, opts.bucket, opts.prefix, page_size=self._page_size, start_after=progress.last_key)

    def _job(self, entry: ObjectEntry) -> ModerationJob:
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
        progress = self.record.progress
        if not self.dry_run:
            self.gate.measure()
        try:
            for page in self._pages():
                for entry in page:
                    if self._stop.is_set():
                        raise Stopped
                    reason = skip_reason(entry, self.record.options.include, self.record.options.max_bytes)
                    live = reason is None and self._queue is not None
                    sent_now = self._send(entry) if live else reason is None
                    progress.listed += 1
                    if reason is not None:
                        self._count_skip(reason)
                    else:
                        progress.enqueued += 1
                        self.stats.enqueued_this_run += int(sent_now)
                    self._advance(entry)
                    self._tick()
                self._checkpoint()
                if not self.dry_run:
                    self.gate.measure()  # fresh depth for the display, and headroom re-based once per page
                if time.monotonic() - last_tally >= _TALLY_EVERY_S and not self.dry_run:
                    last_tally = time.monotonic()
                    self._tally()
        finally:
            self.stats.seconds = time.monotonic() - start
            self.stats.peak_depth = self.gate.peak_depth
            self.stats.waits = self.gate.waits
            self._report(start)
        return self.stats

    def _send(self, entry: ObjectEntry) -> bool:
        """Send the entry's job; False when it turned out to be sent already (the in-doubt job of a resume)."""
        assert self._queue is not None
        job = self._job(entry)
        if self._in_doubt:
            self._in_doubt = False
            if self._queue.was_sent(job.job_id, self.record.options.queue):
                return False  # sent before the crash, checkpoint lost: count it, do not send it again
        self.gate.acquire()  # may raise Stopped: nothing is counted for this entry yet
        store = self._store
        # The checkpoint as of the previous job rides along with this job's record: one round trip, and this job
        # is the only one in doubt should the process die before the next checkpoint.
        also = (lambda pipe: store.save_cursor(self.record, pipe)) if store is not None else None
        self._queue.send(job, queue=self.record.options.queue, also=also)
        return True

    def _count_skip(self, reason: str) -> None:
        progress = self.record.progress
        if reason == SKIP_INCLUDE:
            progress.skipped_include += 1
        elif reason == SKIP_SIZE:
            progress.skipped_size += 1
        else:
            progress.skipped_other += 1

    def _checkpoint(self) -> None:
        if self._store is not None:
            self._store.save(self.record)

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
