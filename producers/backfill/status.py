"""What ``guardq backfill status ID`` reports: progress of the listing and the verdicts of its jobs so far."""

from __future__ import annotations

import time
from typing import Any

import redis

from producers.backfill.checkpoint import BackfillStore
from producers.backfill.tally import tally, tally_gap
from producers.dataset.status import dataset_summary, shard_rows
from producers.rediskeys import backfill_lock_key


def backfill_status(client: redis.Redis[bytes], backfill_id: str, *, tally_budget_s: float = 5.0) -> dict[str, Any]:
    """Catch the verdict tally up (bounded), then read the record; raises ``not_found`` for an unknown id."""
    store = BackfillStore(client)
    store.load(backfill_id)  # fail fast on an unknown id, before any tally work
    caught_up = tally(client, budget_s=tally_budget_s).caught_up
    record = store.load(backfill_id)
    progress, options = record.progress, record.options
    holder = client.get(backfill_lock_key(backfill_id))
    state = progress.state
    if state == "running" and holder is None:
        state = "interrupted"  # the runner died without writing its final state (SIGKILL, lost host)
    settled = record.completed + record.failed
    in_flight = max(progress.enqueued - settled, 0)
    gap = tally_gap(client)  # events trimmed before being tallied: matters only if some could be ours
    gap_ms = int(gap.split("-", 1)[0]) if gap else 0
    counts_may_be_low = bool(gap) and gap_ms >= progress.created_at * 1000 and in_flight > 0
    report: dict[str, Any] = {
        "backfill_id": backfill_id,
        "state": state,
        "source": options.source,
        "format": options.format,
        "queue": options.queue,
        "results": options.results,
        "queue_depth": int(client.llen(options.queue)),
        "listed": progress.listed,
        "enqueued": progress.enqueued,
        "skipped": progress.skipped,
        "skipped_by": {
            "include": progress.skipped_include,
            "size": progress.skipped_size,
            "other": progress.skipped_other,
        },
        "completed": record.completed,
        "failed": record.failed,
        "in_flight": in_flight,
        "last_key": progress.last_key or None,
        "runner": holder.decode() if holder else None,
        "created_at": _iso(progress.created_at),
        "updated_at": _iso(progress.updated_at),
        "finished_at": _iso(progress.finished_at),
        "error": progress.error or None,
        "tally_caught_up": caught_up,
        "tally_gap": counts_may_be_low,
    }
    if options.dataset:  # per shard: rows, verdicts, results file, problems
        shards = shard_rows(client, record)
        report |= {"results_format": options.results_format, "dataset": dataset_summary(shards), "shards": shards}
    return report


def _iso(ts: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None
