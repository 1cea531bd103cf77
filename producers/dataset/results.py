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
unwritten set; every sink sweeps those at start and every ``GUARDQ_RESULTS_BATCH_S``, so any live sink finishes it. A per-shard lock keeps two sinks from building the same
file at once (harmless anyway: same rows, same bytes).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from typing import Any

import redis
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from producers.backfill.checkpoint import BackfillStore
from producers.consumer import Entry
from producers.dataset.resultfile import (
    manifest_body,
    manifest_object,
    parquet_bytes,
    result_row,
    results_object,
    summarize,
)
from producers.rediskeys import (
    DATASET_RESULTS,
    backfill_shards_key,
    dataset_lock_key,
    dataset_manifest_key,
    dataset_staged_key,
    dataset_unwritten_key,
    dataset_written_key,
)
from schemas.errors import GuardqError
from schemas.settings import Settings

log = structlog.get_logger("guardq.results")
LOCK_TTL_S = 300

_STAGE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  for i = 5, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('XACK', KEYS[3], ARGV[2], unpack(cjson.decode(ARGV[3])))
return redis.call('HLEN', KEYS[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_WROTE_MANIFEST = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'written_seq') or '-1')
if tonumber(ARGV[1]) > seen then redis.call('HSET', KEYS[1], 'written_seq', ARGV[1]) end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'complete', '1') end
return 1
"""


def register_dataset_results(client: redis.Redis[bytes], backfill_id: str, uri: str, source_prefix: str) -> None:
    """Send backfill ``backfill_id``'s verdicts to per-shard Parquet files under ``uri`` (before its first job)."""
    from producers.results.targets import ensure_results_group

    ensure_results_group(client)
    client.hset(DATASET_RESULTS, backfill_id, json.dumps({"uri": uri.rstrip("/"), "prefix": source_prefix}))


def dataset_target(client: redis.Redis[bytes], backfill_id: str) -> dict[str, str] | None:
    raw = client.hget(DATASET_RESULTS, backfill_id)
    return dict(json.loads(raw)) if raw else None


class ShardResults:
    """The Parquet side of one results sink (one instance per :class:`~producers.results.sink.ResultsSink`)."""

    def __init__(self, client: redis.Redis[bytes], s3: Any, settings: Settings, *, stream: str, group: str) -> None:
        self.redis, self.s3, self.settings = client, s3, settings
        self._stream, self._group = stream, group
        self._stage = client.register_script(_STAGE)
        self._release = client.register_script(_RELEASE)
        self._wrote_manifest = client.register_script(_WROTE_MANIFEST)
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
        target = dataset_target(self.redis, backfill_id)
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
            self.redis.xack(self._stream, self._group, *unusable)  # type: ignore[no-untyped-call]
        for (backfill, shard_uri), group in groups.items():
            shard_key = shard_uri[len("s3://") :].partition("/")[2]
            args: list[Any] = [shard_key, self._group, json.dumps([e.id for e in group]), self.settings.job_ttl_s]
            for entry in group:
                assert entry.event is not None
                args += [entry.event.data.job_id, json.dumps(result_row(entry.event))]
            keys = [dataset_written_key(backfill), dataset_staged_key(backfill, shard_key), self._stream]
            staged = int(self._stage(keys=keys, args=args))
            self._write_if_complete(backfill, shard_key, staged)

    def sweep(self) -> int:
        """Write every complete shard of every Parquet-results backfill, and the manifests that are behind."""
        written = 0
        for raw in self.redis.hkeys(DATASET_RESULTS):
            backfill = raw.decode()
            if not self.accepts(backfill):
                continue
            for shard in sorted(m.decode() for m in self.redis.smembers(dataset_unwritten_key(backfill))):
                written += self._write_if_complete(backfill, shard, None)
            self._manifest(backfill, force=False)
        return written

    # --- internals ------------------------------------------------------------------------------------------
    def _write_if_complete(self, backfill: str, shard_key: str, staged: int | None) -> int:
        raw = self.redis.hget(backfill_shards_key(backfill), shard_key)
        if raw is None or not self.redis.sismember(dataset_unwritten_key(backfill), shard_key):
            return 0  # still being sent (its job count is not known yet), or already written
        expected = int(json.loads(raw)["jobs"])
        if staged is None:
            staged = int(self.redis.hlen(dataset_staged_key(backfill, shard_key)))
        if staged < expected:
            return 0
        try:
            return self._write(backfill, shard_key)
        except (ClientError, BotoCoreError) as exc:  # S3 unavailable: the rows are safe in Redis; a later sweep writes
            log.warning("shard_results_deferred", backfill_id=backfill, shard=shard_key, error=str(exc))
            return 0

    def _write(self, backfill: str, shard_key: str) -> int:
        lock, token = dataset_lock_key(backfill, shard_key), uuid.uuid4().hex
        if not self.redis.set(lock, token, nx=True, ex=LOCK_TTL_S):
            return 0  # another sink is writing it
        try:
            target = self._targets[backfill]
            staged_key = dataset_staged_key(backfill, shard_key)
            rows = [json.loads(v) for v in self.redis.hvals(staged_key)]
            body = parquet_bytes(rows)
            bucket, key = results_object(target["uri"], target["prefix"], shard_key)
            self._put_once(bucket, key, body)
            info = summarize(body, bucket, key)
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(dataset_written_key(backfill), shard_key, json.dumps(info))
            pipe.srem(dataset_unwritten_key(backfill), shard_key)
            pipe.delete(staged_key)
            pipe.hincrby(dataset_manifest_key(backfill), "seq", 1)
            pipe.execute()
            self.files_written += 1
            log.info(
                "shard_results_written", backfill_id=backfill, shard=shard_key, object=info["object"], rows=len(rows)
            )
        finally:
            self._release(keys=[lock], args=[token])
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
        state = {k.decode(): v.decode() for k, v in self.redis.hgetall(dataset_manifest_key(backfill)).items()}
        if state.get("complete") == "1":
            return
        seq, shown = int(state.get("seq", 0)), int(state.get("written_seq", -1))
        complete = self._complete(backfill)
        due = time.monotonic() - self._manifest_at.get(backfill, float("-inf")) >= self.settings.results_batch_s
        if not (force or complete or (seq > shown and due)):
            return
        lock, token = dataset_lock_key(backfill, "_manifest"), uuid.uuid4().hex
        if not self.redis.set(lock, token, nx=True, ex=LOCK_TTL_S):
            return  # another sink is writing it; the next sweep checks again
        try:
            target = self._targets[backfill]
            written = {k.decode(): json.loads(v) for k, v in self.redis.hgetall(dataset_written_key(backfill)).items()}
            record = BackfillStore(self.redis).load(backfill)
            bucket, key = manifest_object(target["uri"])
            body = manifest_body(backfill, record.options.source, target["uri"], written, complete=complete)
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
            self._wrote_manifest(keys=[dataset_manifest_key(backfill)], args=[seq, "1" if complete else "0"])
            self._manifest_at[backfill] = time.monotonic()
        except (GuardqError, ClientError, BotoCoreError) as exc:  # the next sweep tries again
            log.warning("manifest_not_written", backfill_id=backfill, error=str(exc))
        finally:
            self._release(keys=[lock], args=[token])

    def _complete(self, backfill: str) -> bool:
        """Every shard sent (the backfill finished) and every shard's results file written."""
        try:
            record = BackfillStore(self.redis).load(backfill)
        except GuardqError:
            return False
        if record.progress.state != "finished":
            return False
        return self.redis.scard(dataset_unwritten_key(backfill)) == 0
