"""Count completed/failed jobs per backfill from the verdict stream, reading each event exactly once.

One cursor (``guardq:backfill-tally`` field ``cursor``) is shared by all backfills: a tally step reads the next
events after it, adds ``completed``/``failed`` to the hash of each event's ``data.backfill_id``, and moves the
cursor, all in one optimistic transaction (WATCH the cursor, MULTI/EXEC), so concurrent tallies (a running
backfill, several ``guardq backfill status``) never count an event twice. Cost is O(new events) per step and
O(total events) overall, independent of how many backfills exist or how large they are; a ``status`` on a
10-million-job backfill reads two hashes. Counts are exact because the worker's publish guard emits exactly one
terminal event per job id and backfill job ids are deterministic. If the stream was trimmed past the cursor
(``GUARDQ_STREAM_MAXLEN``) before a tally ran, the gap is recorded and reported (counts may then be low).
Events of dataset jobs (``data.sample``) are also counted per shard, in the same transaction.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.client import Pipeline

from producers.rediskeys import BACKFILL_INDEX, BACKFILL_TALLY, backfill_shard_tally_key
from schemas.events import STREAM_FIELD, EventType
from schemas.keys import VERDICT_STREAM, backfill_key

_KINDS = {EventType.COMPLETED.value: "completed", EventType.FAILED.value: "failed"}


@dataclass
class TallyResult:
    events: int = 0
    counted: int = 0
    caught_up: bool = False
    gap: bool = False


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def tally_step(client: redis.Redis[bytes], *, batch: int = 1000, stream: str = VERDICT_STREAM) -> TallyResult:
    """Tally up to ``batch`` new events; retried internally while another tally moves the cursor."""
    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(BACKFILL_TALLY)
                # In WATCH mode a pipeline runs commands at once and returns their replies.
                raw_cursor = cast(bytes | None, pipe.hget(BACKFILL_TALLY, "cursor"))
                if raw_cursor is None:
                    return TallyResult(caught_up=True)  # no backfill was ever created
                cursor = raw_cursor.decode()
                entries = cast(
                    list[tuple[bytes, dict[bytes, bytes]]], pipe.xrange(stream, min=f"({cursor}", count=batch)
                )
                gap = _trimmed_past(pipe, cursor, stream) if entries else None
                counts: Counter[tuple[str, str]] = Counter()
                by_shard: Counter[tuple[str, str]] = Counter()
                for _, fields in entries:
                    found = _backfill_event(fields.get(STREAM_FIELD.encode()))
                    if found is not None:
                        backfill_id, kind, shard = found
                        counts[(backfill_id, kind)] += 1
                        if shard:
                            by_shard[(backfill_id, f"{shard}\t{kind}")] += 1
                known = _known(pipe, sorted({bid for bid, _ in counts}))
                pipe.multi()
                for (backfill_id, kind), n in counts.items():
                    if backfill_id in known:
                        pipe.hincrby(backfill_key(backfill_id), kind, n)
                for (backfill_id, field), n in by_shard.items():
                    if backfill_id in known:
                        pipe.hincrby(backfill_shard_tally_key(backfill_id), field, n)
                if entries:
                    last = entries[-1][0]
                    pipe.hset(BACKFILL_TALLY, "cursor", last.decode())
                if gap:
                    pipe.hset(BACKFILL_TALLY, "gap_until", gap)
                pipe.execute()
                counted = sum(n for (bid, _), n in counts.items() if bid in known)
                return TallyResult(len(entries), counted, caught_up=len(entries) < batch, gap=bool(gap))
            except redis.WatchError:
                continue


def tally(client: redis.Redis[bytes], *, budget_s: float = 5.0, batch: int = 1000) -> TallyResult:
    """Tally until caught up or ``budget_s`` passed (status stays responsive behind a long backlog)."""
    total = TallyResult()
    deadline = time.monotonic() + budget_s
    while True:
        step = tally_step(client, batch=batch)
        total.events += step.events
        total.counted += step.counted
        total.gap = total.gap or step.gap
        if step.caught_up or time.monotonic() >= deadline:
            total.caught_up = step.caught_up
            return total


def tally_gap(client: redis.Redis[bytes]) -> str | None:
    """The newest stream id trimmed before it was tallied, if that ever happened."""
    raw = client.hget(BACKFILL_TALLY, "gap_until")
    return raw.decode() if raw else None


def _backfill_event(raw: bytes | None) -> tuple[str, str, str | None] | None:
    """(backfill id, completed|failed, the dataset shard's uri or None) of a backfill job's event."""
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        backfill_id = doc["data"].get("backfill_id")
        kind = _KINDS.get(doc.get("type", ""))
        sample = doc["data"].get("sample")
        shard = sample.get("shard") if isinstance(sample, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return (str(backfill_id), kind, str(shard) if shard else None) if backfill_id and kind else None


def _known(pipe: Pipeline[bytes], backfill_ids: list[str]) -> set[str]:
    """Only backfills that exist are counted (an event of an unknown id must not create a stray hash)."""
    if not backfill_ids:
        return set()
    return {bid for bid in backfill_ids if pipe.zscore(BACKFILL_INDEX, bid) is not None}


def _trimmed_past(pipe: Pipeline[bytes], cursor: str, stream: str) -> str | None:
    """The newest deleted id if entries after ``cursor`` were trimmed before being tallied (Redis ≥ 7.0)."""
    try:
        info = cast(dict[str, Any], pipe.xinfo_stream(stream))
    except redis.ResponseError:
        return None
    deleted = info.get("max-deleted-entry-id")
    if isinstance(deleted, bytes):
        deleted = deleted.decode()
    return str(deleted) if deleted and _id_tuple(str(deleted)) > _id_tuple(cursor) else None
