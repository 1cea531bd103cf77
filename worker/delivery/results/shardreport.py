"""Report over a dataset backfill's Parquet results: counts per shard and overall, the failed samples with their
codes, and the keep list (keys that passed the policy) for curation scripts.

Only shards listed in ``_manifest.json`` are read (their files are complete); each results file is read whole
(one shard's verdicts, a few MB), the keep list and the failed samples are written out shard by shard, so memory
does not grow with the number of shards. A sample *passes* when it completed with rating ``Safe`` and no
``needs_review`` flag (a Safe verdict whose P(Unsafe) reached the policy's ``unsafe_threshold``).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from schemas.errors import ErrorCode, PermanentError
from worker.delivery.results.shardfile import read_manifest, read_results

FAILED_SHOWN = 20  # failed samples kept in the report itself (all of them go to --failed FILE)
FAILED_COLUMNS = ["shard", "key", "index", "error_code", "error_message", "job_id"]


@dataclass
class DatasetReport:
    backfill_id: str
    complete: bool
    shards: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    kept: int = 0
    ratings: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    failed: list[dict[str, Any]] = field(default_factory=list)  # the first FAILED_SHOWN

    def summary(self) -> dict[str, Any]:
        return {
            "backfill_id": self.backfill_id,
            "complete": self.complete,
            "shards": self.shards,
            "rows": self.rows,
            "completed": sum(self.ratings.values()),
            "failed": sum(self.errors.values()),
            "kept": self.kept,
            "ratings": dict(self.ratings.most_common()),
            "categories": dict(self.categories.most_common()),
            "errors": dict(self.errors.most_common()),
            "failed_samples": self.failed,
        }


def build_dataset_report(
    s3: Any, results_uri: str, *, keep_list: Path | None = None, failed_csv: Path | None = None
) -> DatasetReport:
    manifest = read_manifest(s3, results_uri)
    if manifest is None:
        raise PermanentError(f"no {results_uri}/_manifest.json yet: no shard is finished", code=ErrorCode.NOT_FOUND)
    report = DatasetReport(str(manifest["backfill_id"]), bool(manifest["complete"]))
    keep_out = keep_list.open("w") if keep_list is not None else None
    failed_out = failed_csv.open("w", newline="") if failed_csv is not None else None
    try:
        failed_writer = csv.DictWriter(failed_out, fieldnames=FAILED_COLUMNS) if failed_out else None
        if failed_writer is not None:
            failed_writer.writeheader()
        for shard in manifest["shards"]:
            _add_shard(report, s3, shard, keep_out, failed_writer)
    finally:
        for handle in (keep_out, failed_out):
            if handle is not None:
                handle.close()
    return report


def _add_shard(
    report: DatasetReport, s3: Any, shard: dict[str, Any], keep_out: TextIO | None, failed: csv.DictWriter[str] | None
) -> None:
    table = read_results(s3, shard["object"])
    rows = table.select(["key", "index", "rating", "category", "needs_review", "error_code", "error_message", "job_id"])
    counts: Counter[str] = Counter()
    for row in rows.to_pylist():
        report.rows += 1
        if row["error_code"]:
            counts["failed"] += 1
            report.errors[row["error_code"]] += 1
            item = {"shard": shard["shard"], **{k: row[k] for k in FAILED_COLUMNS[1:]}}
            if len(report.failed) < FAILED_SHOWN:
                report.failed.append(item)
            if failed is not None:
                failed.writerow(item)
            continue
        counts["completed"] += 1
        report.ratings[row["rating"]] += 1
        report.categories[row["category"]] += 1
        if row["rating"] == "Safe" and not row["needs_review"]:
            report.kept += 1
            counts["kept"] += 1
            if keep_out is not None:
                keep_out.write(f"{row['key']}\n")
    report.shards.append(
        {
            "shard": shard["shard"],
            "object": shard["object"],
            "rows": table.num_rows,
            **{k: counts[k] for k in ("completed", "failed", "kept")},
        }
    )
