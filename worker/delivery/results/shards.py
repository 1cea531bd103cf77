"""Parquet results per input shard, written by the results sink (``guardq results sink``) once a shard is complete.

For a backfill registered with ``--results-format parquet``, the sink hands each terminal event to
:class:`ShardResults` instead of the JSON Lines buffer:

1. **stage** — one Lua step per batch records the event's row in the shard's staging hash (``HSETNX`` by job id:
   a redelivered or duplicated event adds nothing) and acks the stream entry; the row is then safe in Redis.
2. **write** — when a shard's staged rows reach the number of jobs the backfill sent for it (known once the
   shard's last batch landed), the shard's results Parquet is built from the staged rows and PUT once
   (``If-None-Match: *``; an earlier attempt that crashed after its PUT left the same bytes, so "already there" is
   success). A single PUT is atomic in S3: the file is never visible half-written.
3. **commit** — one transaction records the written file, drops the shard from the unwritten set and deletes its
   staging hash; then the manifest (``_manifest.json``, every written shard) is rewritten, at most every
   ``GUARDQ_RESULTS_BATCH_S`` and always when the backfill is complete.

A sink that dies between steps (or meets an S3 error, logged as ``shard_results_deferred``) leaves the shard in the
unwritten set; every sink sweeps those at start and every ``GUARDQ_RESULTS_BATCH_S``, so any live sink finishes it. A per-shard
lock keeps two sinks from building the same file at once (harmless anyway: same rows, same bytes). The Redis side of
all this is :class:`~worker.delivery.results.shardledger.ShardLedger`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import redis
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from schemas.errors import GuardqError
from schemas.settings import Settings
from worker.delivery.results.shardfile import (
    manifest_body,
    manifest_object,
    parquet_bytes,
    result_row,
    results_object,
    summarize,
)
from worker.delivery.results.shardledger import ShardLedger
from worker.delivery.stream.consumer import Entry

log = structlog.get_logger("guardq.results")
MANIFEST_LOCK = "_manifest"


class ShardResults:
    """The Parquet side of one results sink (one instance per :class:`~worker.delivery.results.sink.ResultsSink`)."""

    def __init__(self, client: redis.Redis[bytes], s3: Any, settings: Settings, *, stream: str, group: str) -> None:
        self.redis, self.s3, self.settings = client, s3, settings
        self.ledger = ShardLedger(client, stream=stream, group=group)
        self._targets: dict[str, dict[str, str]] = {}
        # A backfill's results format is fixed before its first job is sent, so "not Parquet" is final: remembered.
        self._not_ours: set[str] = set()
        self._manifest_at: dict[str, float] = {}
        self.files_written = 0

    def accepts(self, backfill_id: str) -> bool:
        if backfill_id in self._targets:
            return True
        if backfill_id in self._not_ours:
            return False
        target = self.ledger.target(backfill_id)
        if target is None:
            if len(self._not_ours) >= 100_000:
                self._not_ours.clear()
            self._not_ours.add(backfill_id)
            return False
        self._targets[backfill_id] = target
        return True

    def stage(self, entries: list[Entry]) -> None:
        """Stage the rows of these events (all of accepted backfills) and ack them; write shards now complete."""
        groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
        unusable: list[str] = []
        for entry in entries:
            assert entry.event is not None
            sample, backfill = entry.event.data.sample, entry.event.data.backfill_id
            if sample is None or backfill is None:
                log.warning("dataset_event_without_sample", job_id=entry.event.data.job_id, stream_id=entry.id)
                unusable.append(entry.id)
                continue
            groups[(backfill, sample.shard)].append(entry)
        if unusable:
            self.ledger.ack(unusable)
        for (backfill, shard_uri), group in groups.items():
            shard_key = shard_uri[len("s3://") :].partition("/")[2]
            rows = []
            for entry in group:
                assert entry.event is not None
                rows.append((entry.id, entry.event.data.job_id, result_row(entry.event)))
            staged = self.ledger.stage(backfill, shard_key, rows, self.settings.job_ttl_s)
            self._write_if_complete(backfill, shard_key, staged)

    def sweep(self) -> int:
        """Write every complete shard of every Parquet-results backfill, and the manifests that are behind."""
        written = 0
        for backfill in self.ledger.backfills():
            if not self.accepts(backfill):
                continue
            for shard in self.ledger.unwritten(backfill):
                written += self._write_if_complete(backfill, shard, None)
            self._manifest(backfill, force=False)
        return written

    # --- internals ------------------------------------------------------------------------------------------
    def _write_if_complete(self, backfill: str, shard_key: str, staged: int | None) -> int:
        expected = self.ledger.expected_jobs(backfill, shard_key)
        if expected is None:
            return 0  # still being sent (its job count is not known yet), or already written
        if staged is None:
            staged = self.ledger.staged_count(backfill, shard_key)
        if staged < expected:
            return 0
        try:
            return self._write(backfill, shard_key)
        except (ClientError, BotoCoreError) as exc:  # S3 unavailable: the rows are safe in Redis; a later sweep writes
            log.warning("shard_results_deferred", backfill_id=backfill, shard=shard_key, error=str(exc))
            return 0

    def _write(self, backfill: str, shard_key: str) -> int:
        token = self.ledger.lock(backfill, shard_key)
        if token is None:
            return 0  # another sink is writing it
        try:
            target = self._targets[backfill]
            rows = self.ledger.staged_rows(backfill, shard_key)
            body = parquet_bytes(rows)
            bucket, key = results_object(target["uri"], target["prefix"], shard_key)
            self._put_once(bucket, key, body)
            info = summarize(body, bucket, key)
            self.ledger.commit(backfill, shard_key, info)
            self.files_written += 1
            log.info(
                "shard_results_written", backfill_id=backfill, shard=shard_key, object=info["object"], rows=len(rows)
            )
        finally:
            self.ledger.unlock(backfill, shard_key, token)
        self._manifest(backfill, force=False)
        return 1

    def _put_once(self, bucket: str, key: str, body: bytes) -> None:
        try:
            self.s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/vnd.apache.parquet", IfNoneMatch="*"
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in {"PreconditionFailed", "412"}:
                raise
            # A sink that died after its PUT and before its commit wrote these very bytes already.

    def _manifest(self, backfill: str, *, force: bool) -> None:
        """Rewrite ``_manifest.json`` when it is behind (at most every GUARDQ_RESULTS_BATCH_S unless complete)."""
        state = self.ledger.manifest_state(backfill)
        if state.get("complete") == "1":
            return
        seq, shown = int(state.get("seq", 0)), int(state.get("written_seq", -1))
        complete = self._complete(backfill)
        due = time.monotonic() - self._manifest_at.get(backfill, float("-inf")) >= self.settings.results_batch_s
        if not (force or complete or (seq > shown and due)):
            return
        token = self.ledger.lock(backfill, MANIFEST_LOCK)
        if token is None:
            return  # another sink is writing it; the next sweep checks again
        try:
            target = self._targets[backfill]
            written = self.ledger.written(backfill)
            record = self.ledger.backfill(backfill)
            bucket, key = manifest_object(target["uri"])
            body = manifest_body(backfill, record.options.source, target["uri"], written, complete=complete)
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
            self.ledger.wrote_manifest(backfill, seq, complete=complete)
            self._manifest_at[backfill] = time.monotonic()
        except (GuardqError, ClientError, BotoCoreError) as exc:  # the next sweep tries again
            log.warning("manifest_not_written", backfill_id=backfill, error=str(exc))
        finally:
            self.ledger.unlock(backfill, MANIFEST_LOCK, token)

    def _complete(self, backfill: str) -> bool:
        """Every shard sent (the backfill finished) and every shard's results file written."""
        try:
            record = self.ledger.backfill(backfill)
        except GuardqError:
            return False
        if record.progress.state != "finished":
            return False
        return self.ledger.all_written(backfill)
