"""Run one dataset backfill: walk the shards, send one job per row with backpressure, checkpoint per shard.

The loop, the backpressure gate, the batches and their transactions are the object backfill's
(:class:`~producers.backfill.runner.BackfillRunner`); what differs is what is walked (rows of shards) and what each
transaction also carries: the cursor names the last finished shard and how many rows of the current one were
handled, and the transaction that sends a shard's last rows also stores the shard's record (its counts) and, for
Parquet results, marks the shard as awaiting its results file. So a shard is the unit the results and the status
report on, and the resume point is exact: a run that dies anywhere resumes after the last batch that landed,
re-walks the current shard from its start and sends none of its rows twice, and none is missed.

Job ids are ``uuid5(backfill id, shard uri, row position, key)``: deterministic per row, distinct even when a
shard repeats a key.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from redis.client import Pipeline

from producers.backfill.runner import BackfillRunner
from producers.dataset.samples import SKIP_SIZE, Sample, ShardDone
from producers.dataset.shards import Resume, Unit, dataset_pages
from schemas.dataset import DatasetSample
from schemas.job import ModerationJob, Priority
from schemas.keys import backfill_shards_key
from worker.delivery import expect_shard_results

_ROW_NAMESPACE = uuid.UUID("6f1d0a7e-2b4c-4e59-8a3f-9c7d5e1b2a40")


def dataset_job_id(backfill_id: str, shard_uri: str, position: int, key: str) -> str:
    """The same row of the same shard in the same backfill always gets the same job id."""
    return uuid.uuid5(_ROW_NAMESPACE, f"{backfill_id}\n{shard_uri}\n{position}\n{key}").hex


class DatasetRunner(BackfillRunner):
    """A :class:`BackfillRunner` over the rows of a dataset's shards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._finished_shards: list[ShardDone] = []  # in the batch in hand, not yet landed

    def _pages(self) -> Iterator[Sequence[Unit]]:
        p = self.record.progress
        resume = Resume(last_key=p.last_key, shard_key=p.shard_key, pos=p.shard_pos, etag=p.shard_etag)
        return dataset_pages(self._s3, self.record.options, page_size=self._page_size, resume=resume)

    def _take(self, entry: Unit) -> None:
        progress = self.record.progress
        if isinstance(entry, ShardDone):
            progress.last_key = entry.shard.key
            progress.shard_key, progress.shard_pos, progress.shard_etag = "", 0, ""
            progress.shards += 1
            self._finished_shards.append(entry)
            return
        if entry.skip is not None:
            if entry.skip == SKIP_SIZE:
                progress.skipped_size += 1
            else:
                progress.skipped_other += 1
        elif self._queue is not None:
            self._admit(entry)  # may raise Stopped: nothing is counted for this row yet
        else:
            self.stats.enqueued_this_run += 1  # a dry run counts what it would send
        progress.listed += 1
        progress.enqueued += int(entry.skip is None)
        progress.shard_key, progress.shard_pos = entry.shard.key, entry.position + 1
        progress.shard_etag = entry.shard.etag or ""

    def _job(self, entry: Sample) -> ModerationJob:
        opts = self.record.options
        assert entry.image is not None
        return ModerationJob(
            job_id=dataset_job_id(self.record.backfill_id, entry.shard.uri, entry.position, entry.key),
            image=entry.image,
            model=opts.model,
            policy_ref=opts.policy_ref,
            tenant=opts.tenant,
            metadata=opts.metadata,
            priority=Priority.BULK,
            backfill_id=self.record.backfill_id,
            sample=DatasetSample(shard=entry.shard.uri, key=entry.key, index=entry.index),
        )

    def _checkpoint(self, pipe: Pipeline[bytes]) -> None:
        super()._checkpoint(pipe)
        if not self._finished_shards:
            return
        bid = self.record.backfill_id
        now = time.time()
        records = {
            done.shard.key: json.dumps({**done.summary.as_dict(), "sent_at": now}) for done in self._finished_shards
        }
        pipe.hset(backfill_shards_key(bid), mapping=records)  # type: ignore[arg-type]
        if self.record.options.results_format == "parquet":
            expect_shard_results(pipe, bid, list(records))

    def _landed(self) -> None:
        self._finished_shards = []

    def _rolled_back(self) -> None:
        self._finished_shards = []
