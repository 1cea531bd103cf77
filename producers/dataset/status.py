"""Per-shard status of a dataset backfill: rows found and sent, verdicts so far, results file, problems.

Reads the shards' records (written with each shard's last batch), the per-shard verdict tally and, for Parquet
results, which shards' files are written; the shard being sent right now is listed with the rows sent so far.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from producers.rediskeys import backfill_shard_tally_key
from schemas.backfill import BackfillRecord
from schemas.keys import backfill_shards_key
from worker.delivery import shard_results_state


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def shard_rows(client: redis.Redis[bytes], record: BackfillRecord) -> list[dict[str, Any]]:
    """One entry per shard, in listing order; the shard being sent (if any) last, with ``state: sending``."""
    bid = record.backfill_id
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(backfill_shards_key(bid))
    pipe.hgetall(backfill_shard_tally_key(bid))
    shards_raw, tally_raw = pipe.execute()
    tally = {k: int(v) for k, v in _decoded(tally_raw).items()}
    written, unwritten = shard_results_state(client, bid)
    parquet = record.options.results_format == "parquet"
    out = []
    for key, raw in sorted(_decoded(shards_raw).items()):
        summary = json.loads(raw)
        completed = tally.get(f"{summary['uri']}\tcompleted", 0)
        failed = tally.get(f"{summary['uri']}\tfailed", 0)
        results = None
        if parquet:
            results = "written" if key in written else "waiting" if key in unwritten else None
        out.append(
            {
                "shard": key,
                "state": "sent",
                "rows": summary["rows"],
                "jobs": summary["jobs"],
                "missing": summary["missing"],
                "skipped": summary["skipped"],
                "completed": completed,
                "failed": failed,
                "in_flight": max(summary["jobs"] - completed - failed, 0),
                "results": results,
                "results_object": written.get(key, {}).get("object"),
                "problems": summary["problems"],
            }
        )
    progress = record.progress
    if progress.shard_key:
        out.append({"shard": progress.shard_key, "state": "sending", "rows_handled": progress.shard_pos})
    return out


def dataset_summary(shards: list[dict[str, Any]]) -> dict[str, Any]:
    sent = [s for s in shards if s["state"] == "sent"]
    return {
        "shards_sent": len(sent),
        "shards_with_problems": sum(1 for s in sent if s["problems"]),
        "results_written": sum(1 for s in sent if s["results"] == "written"),
        "results_waiting": sum(1 for s in sent if s["results"] == "waiting"),
        "missing_images": sum(s["missing"] for s in sent),
        "sending": next((s["shard"] for s in shards if s["state"] == "sending"), None),
    }
