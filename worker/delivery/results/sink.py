"""The S3 JSONL results sink: every verdict event of a backfill, exactly once, batched into JSON Lines objects.

A consumer group (``guardq.results``) on the verdict stream. Events of a backfill with a results location are
buffered per backfill and flushed as one object when ``GUARDQ_RESULTS_BATCH_EVENTS`` are buffered or the oldest
has waited ``GUARDQ_RESULTS_BATCH_S``, and on shutdown: ``<prefix>/<backfill id>/part-<first stream id>.jsonl``,
one CloudEvent JSON per line (exactly the stream's bytes). Events of other jobs are acked and skipped.

Exactly once, across crashes and duplicate deliveries, in three steps:
1. one Lua step claims each job for the part (``HSETNX results_part`` in the job hash; a job claimed by an earlier
   part is dropped from this one) and writes the part's body ahead, into ``guardq:results:pending``;
2. PUT the object (same name, same bytes if repeated);
3. drop the pending record and ack the part's stream entries.
A crash before 1 leaves the entries pending (they come back); after 1, the pending record is PUT again by the next
sink to start (:meth:`ResultsSink.recover`); entries seen again are already claimed and only acked.

Events of a dataset backfill registered with ``--results-format parquet`` go to
:class:`~worker.delivery.results.shards.ShardResults` instead: one Parquet per input shard, written once it is complete.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import structlog

from schemas.keys import job_key
from schemas.settings import Settings
from worker.delivery.keys import RESULTS_GROUP, RESULTS_PENDING
from worker.delivery.results.shards import ShardResults
from worker.delivery.results.targets import object_prefix, results_uri
from worker.delivery.stream.consumer import Entry, StreamConsumer

log = structlog.get_logger("guardq.results")

_CLAIM = Path(__file__).with_name("sink_claim.lua").read_text()


@dataclass
class _Buffer:
    uri: str
    entries: list[Entry] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


class ResultsSink:
    """One sink consumer; run one or a few (distinct names). Not thread-safe: one loop per instance."""

    def __init__(self, client: redis.Redis[bytes], s3: Any, settings: Settings, *, consumer: str | None = None) -> None:
        self.redis = client
        self.s3 = s3
        self.settings = settings
        self.reader = StreamConsumer(
            client,
            group=RESULTS_GROUP,
            consumer=consumer or f"results-{socket.gethostname()}",
            batch=min(1000, settings.results_batch_events),
            block_ms=500,
            min_idle_ms=int(max(60.0, settings.results_batch_s * 3) * 1000),
            max_deliveries=20,
            dlq_maxlen=settings.dlq_maxlen,
        )
        self._claim = client.register_script(_CLAIM)
        self.shards = ShardResults(client, s3, settings, stream=self.reader.stream, group=RESULTS_GROUP)
        self._buffers: dict[str, _Buffer] = {}
        self._next_recovery = 0.0
        self.objects_written = 0

    def start(self) -> None:
        """Create the group if missing and finish parts a crashed sink left half-written."""
        self.reader.ensure_group()
        self.recover()
        self.shards.sweep()

    def recover(self) -> int:
        """PUT every part written ahead but not confirmed, then ack its entries; return how many.

        Runs at start and every ``GUARDQ_RESULTS_BATCH_S``, so a part a crashed sink left behind is finished by any
        live sink. Finishing a part its owner is finishing too is harmless: same object name, same bytes.
        """
        self._next_recovery = time.monotonic() + self.settings.results_batch_s
        pending = self.redis.hgetall(RESULTS_PENDING)
        done = 0
        for name, body in pending.items():
            uri = name.decode()
            if uri.endswith("#ids"):
                continue
            ids = (pending.get(f"{uri}#ids".encode()) or b"").decode()
            self._put_and_confirm(uri, body, ids.split(",") if ids else [])
            done += 1
        return done

    def step(self) -> int:
        """Read one batch, buffer what belongs to backfills with results, flush what is due; return entries read."""
        entries = self.reader.read(block_ms=self._block_ms())
        skipped: list[str] = []
        by_shard: list[Entry] = []
        for entry in entries:
            assert entry.event is not None
            backfill = entry.event.data.backfill_id
            if backfill is not None and self.shards.accepts(backfill):
                by_shard.append(entry)
                continue
            uri = results_uri(self.redis, self.settings, backfill) if backfill else None
            if backfill is None or uri is None:
                skipped.append(entry.id)
                continue
            buffer = self._buffers.setdefault(backfill, _Buffer(uri))
            buffer.entries.append(entry)
        self.reader.ack(*skipped)
        self.shards.stage(by_shard)
        self.flush(force=False)
        if time.monotonic() >= self._next_recovery:
            self.recover()
            self.shards.sweep()
        return len(entries)

    def flush(self, *, force: bool = True) -> int:
        """Write every buffer that is full or old enough (all of them with ``force``); return objects written."""
        now = time.monotonic()
        written = 0
        for backfill, buffer in list(self._buffers.items()):
            full = len(buffer.entries) >= self.settings.results_batch_events
            if force or full or now - buffer.since >= self.settings.results_batch_s:
                del self._buffers[backfill]
                for start in range(0, len(buffer.entries), self.settings.results_batch_events):
                    written += self._write(
                        backfill, buffer.uri, buffer.entries[start : start + self.settings.results_batch_events]
                    )
        return written

    def run(self, should_stop: Any = lambda: False) -> None:
        """Loop until ``should_stop()``; then flush what is buffered (the shutdown flush)."""
        self.start()
        try:
            while not should_stop():
                self.step()
        finally:
            self.flush(force=True)

    # --- internals ------------------------------------------------------------------------------------------
    def _block_ms(self) -> int:
        if not self._buffers:
            return 500
        oldest = min(b.since for b in self._buffers.values())
        return max(1, min(500, int((oldest + self.settings.results_batch_s - time.monotonic()) * 1000)))

    def _write(self, backfill: str, uri: str, entries: list[Entry]) -> int:
        bucket, prefix = object_prefix(uri, backfill)
        part = f"s3://{bucket}/{prefix}part-{entries[0].id}.jsonl"
        keys = [RESULTS_PENDING, *(job_key(e.event.data.job_id) for e in entries if e.event is not None)]
        ids = ",".join(e.id for e in entries)
        ttl = self.settings.bulk_record_ttl_s  # a claim lives as long as a backfill job's record
        claimed = int(self._claim(keys=keys, args=[part, ttl, ids, *(e.raw for e in entries)]))
        if claimed == 0:  # every event already went into an earlier part
            self.reader.ack(*(e.id for e in entries))
            return 0
        body = self.redis.hget(RESULTS_PENDING, part) or b""
        self._put_and_confirm(part, body, [e.id for e in entries])
        log.info(
            "results_part_written", backfill_id=backfill, object=part, events=claimed, duplicates=len(entries) - claimed
        )
        return 1

    def _put_and_confirm(self, part: str, body: bytes, stream_ids: list[str]) -> None:
        bucket, _, key = part[5:].partition("/")
        self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")
        self.objects_written += 1
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(RESULTS_PENDING, part, f"{part}#ids")
        if stream_ids:
            pipe.xack(self.reader.stream, self.reader.group, *stream_ids)
        pipe.execute()
