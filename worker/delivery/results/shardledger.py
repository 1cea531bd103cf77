"""The Redis bookkeeping of dataset mode's per-shard Parquet results: every key of it is written here.

Which backfills have Parquet results and where (``guardq:dataset:results``), the shards sent but not yet written
(``…:unwritten``, filled in the backfill's own transaction through :func:`expect_shard_results`), each shard's
staged rows until its file is written (``…:staged:<shard>``), the files written (``…:written``), the manifest's
sequence (``…:manifest``) and the per-shard locks. :class:`~worker.delivery.results.shards.ShardResults` does the
Parquet and S3 work on top of it. Light on purpose (no pyarrow): ``guardq backfill`` and its status import it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import redis
from redis.client import Pipeline

from schemas.backfill import BackfillRecord
from schemas.keys import backfill_key, backfill_shards_key
from worker.delivery.keys import (
    DATASET_RESULTS,
    dataset_lock_key,
    dataset_manifest_key,
    dataset_staged_key,
    dataset_unwritten_key,
    dataset_written_key,
)
from worker.delivery.results.targets import ensure_results_group
from worker.tokenlock import Releaser

LOCK_TTL_S = 300
_STAGE = Path(__file__).with_name("shardledger_stage.lua").read_text()
_WROTE_MANIFEST = Path(__file__).with_name("shardledger_wrote_manifest.lua").read_text()


def register_dataset_results(client: redis.Redis[bytes], backfill_id: str, uri: str, source_prefix: str) -> None:
    """Send backfill ``backfill_id``'s verdicts to per-shard Parquet files under ``uri`` (before its first job)."""
    ensure_results_group(client)
    client.hset(DATASET_RESULTS, backfill_id, json.dumps({"uri": uri.rstrip("/"), "prefix": source_prefix}))


def dataset_target(client: redis.Redis[bytes], backfill_id: str) -> dict[str, str] | None:
    raw = client.hget(DATASET_RESULTS, backfill_id)
    return dict(json.loads(raw)) if raw else None


def expect_shard_results(pipe: Pipeline[bytes], backfill_id: str, shard_keys: list[str]) -> None:
    """Queue on ``pipe`` (the backfill's transaction that sends these shards' last rows): their files are awaited."""
    pipe.sadd(dataset_unwritten_key(backfill_id), *shard_keys)


def shard_results_state(client: redis.Redis[bytes], backfill_id: str) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The shards whose results file is written (shard key -> what the manifest says of it) and those awaited."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(dataset_written_key(backfill_id))
    pipe.smembers(dataset_unwritten_key(backfill_id))
    written_raw, unwritten_raw = pipe.execute()
    written = {k.decode(): json.loads(v) for k, v in written_raw.items()}
    return written, {m.decode() for m in unwritten_raw}


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class ShardLedger:
    """One results sink's handle on the bookkeeping (one Redis client; the scripts registered once)."""

    def __init__(self, client: redis.Redis[bytes], *, stream: str, group: str) -> None:
        self.redis = client
        self._stream, self._group = stream, group
        self._stage = client.register_script(_STAGE)
        self._wrote_manifest = client.register_script(_WROTE_MANIFEST)
        self._release = Releaser(client)

    def backfills(self) -> list[str]:
        """Every backfill registered for Parquet results."""
        return [raw.decode() for raw in self.redis.hkeys(DATASET_RESULTS)]

    def target(self, backfill_id: str) -> dict[str, str] | None:
        return dataset_target(self.redis, backfill_id)

    def ack(self, stream_ids: list[str]) -> None:
        self.redis.xack(self._stream, self._group, *stream_ids)  # type: ignore[no-untyped-call]

    def stage(self, backfill: str, shard_key: str, rows: list[tuple[str, str, dict[str, Any]]], ttl_s: int) -> int:
        """Stage ``(stream id, job id, row)`` of one shard (a job's first row only, unless the file is written
        already) and ack their entries, in one step; return how many rows the shard has staged."""
        args: list[Any] = [shard_key, self._group, json.dumps([sid for sid, _, _ in rows]), ttl_s]
        for _, job_id, row in rows:
            args += [job_id, json.dumps(row)]
        keys = [dataset_written_key(backfill), dataset_staged_key(backfill, shard_key), self._stream]
        return int(self._stage(keys=keys, args=args))

    def unwritten(self, backfill: str) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(dataset_unwritten_key(backfill)))

    def expected_jobs(self, backfill: str, shard_key: str) -> int | None:
        """How many jobs the backfill sent for the shard, once all were sent and while its file is not written."""
        raw = self.redis.hget(backfill_shards_key(backfill), shard_key)
        if raw is None or not self.redis.sismember(dataset_unwritten_key(backfill), shard_key):
            return None
        return int(json.loads(raw)["jobs"])

    def staged_count(self, backfill: str, shard_key: str) -> int:
        return int(self.redis.hlen(dataset_staged_key(backfill, shard_key)))

    def staged_rows(self, backfill: str, shard_key: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.redis.hvals(dataset_staged_key(backfill, shard_key))]

    def lock(self, backfill: str, name: str) -> str | None:
        """Take the lock on writing ``name`` (a shard key, or ``_manifest``): its token, or None when held."""
        token = uuid.uuid4().hex
        return token if self.redis.set(dataset_lock_key(backfill, name), token, nx=True, ex=LOCK_TTL_S) else None

    def unlock(self, backfill: str, name: str, token: str) -> None:
        self._release(dataset_lock_key(backfill, name), token)

    def commit(self, backfill: str, shard_key: str, info: dict[str, Any]) -> None:
        """The shard's file is written: record it, stop awaiting it, drop its staged rows, bump the manifest's
        sequence (one transaction)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(dataset_written_key(backfill), shard_key, json.dumps(info))
        pipe.srem(dataset_unwritten_key(backfill), shard_key)
        pipe.delete(dataset_staged_key(backfill, shard_key))
        pipe.hincrby(dataset_manifest_key(backfill), "seq", 1)
        pipe.execute()

    def manifest_state(self, backfill: str) -> dict[str, str]:
        """``seq`` (shards committed), ``written_seq`` (what the manifest object shows), ``complete``."""
        return _decoded(self.redis.hgetall(dataset_manifest_key(backfill)))

    def written(self, backfill: str) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.redis.hgetall(dataset_written_key(backfill)).items()}

    def wrote_manifest(self, backfill: str, seq: int, *, complete: bool) -> None:
        self._wrote_manifest(keys=[dataset_manifest_key(backfill)], args=[seq, "1" if complete else "0"])

    def all_written(self, backfill: str) -> bool:
        return self.redis.scard(dataset_unwritten_key(backfill)) == 0

    def backfill(self, backfill: str) -> BackfillRecord:
        """The backfill's own record (``producers/backfill`` writes it): its source, and whether it finished."""
        return BackfillRecord.from_hash(backfill, _decoded(self.redis.hgetall(backfill_key(backfill))))
