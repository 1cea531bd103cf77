"""Report over a backfill's JSONL results: counts by rating, category and error code, and a per-image CSV."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.delivery.results.targets import object_prefix

CSV_COLUMNS = [
    "event_id",
    "job_id",
    "type",
    "image_uri",
    "sha256",
    "rating",
    "category",
    "unsafe_score",
    "cached",
    "error_code",
    "time",
]


@dataclass
class BackfillReport:
    backfill_id: str
    objects: int = 0
    events: int = 0
    duplicates: int = 0
    ratings: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "backfill_id": self.backfill_id,
            "objects": self.objects,
            "events": self.events,
            "duplicates": self.duplicates,
            "completed": sum(self.ratings.values()),
            "failed": sum(self.errors.values()),
            "ratings": dict(self.ratings.most_common()),
            "categories": dict(self.categories.most_common()),
            "errors": dict(self.errors.most_common()),
        }

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)


def _row(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data", {})
    verdict = data.get("verdict") or {}
    image = data.get("image") or {}
    return {
        "event_id": event.get("id"),
        "job_id": data.get("job_id"),
        "type": event.get("type"),
        "image_uri": image.get("uri"),
        "sha256": image.get("sha256"),
        "rating": verdict.get("rating"),
        "category": verdict.get("category"),
        "unsafe_score": verdict.get("unsafe_score"),
        "cached": data.get("cached"),
        "error_code": (data.get("error") or {}).get("code"),
        "time": event.get("time"),
    }


def build_report(s3: Any, uri: str, backfill_id: str) -> BackfillReport:
    """Read every ``*.jsonl`` object of the backfill under ``uri`` and tally it (an event id counts once)."""
    bucket, prefix = object_prefix(uri, backfill_id)
    report = BackfillReport(backfill_id)
    seen: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".jsonl"):
                continue
            report.objects += 1
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            for line in body.splitlines():
                if not line.strip():
                    continue
                row = _row(json.loads(line))
                if row["event_id"] in seen:
                    report.duplicates += 1
                    continue
                seen.add(row["event_id"])
                report.events += 1
                report.rows.append(row)
                if row["error_code"]:
                    report.errors[row["error_code"]] += 1
                else:
                    report.ratings[row["rating"]] += 1
                    report.categories[row["category"]] += 1
    return report
