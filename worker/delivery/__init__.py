"""Delivery: everything downstream of the verdict stream, and the public interface the CLI and the API use.

- ``stream/``: reading ``guardq:verdicts`` (the reference consumer-group reader, tailing, waiting for given jobs);
- ``results/``: backfill results in S3 (the results sink, a consumer group: JSON Lines parts, or one Parquet per
  dataset shard) and the reports over them;
- ``webhooks/``: subscriptions, the dispatcher (a consumer group: events -> deliveries), the schedule, the webhook
  worker (its own Celery app and queue ``guardq.webhooks``), replay;
- ``jobstatus``: a job's record and its terminal event, as status queries show them;
- ``keys``: the Redis keys of this package, each written by one module (docs/architecture.md).

Producers import this package only as ``from worker.delivery import <name>`` with the names below, never its
modules (``tests/architecture`` enforces it). Names are imported on first use, so ``guardq`` starts without pyarrow,
and without the webhook worker's Celery app.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.delivery.jobstatus import NO_RECORD, JobView, read_job
    from worker.delivery.results.report import BackfillReport, build_report
    from worker.delivery.results.shardfile import read_manifest
    from worker.delivery.results.shardledger import (
        dataset_target,
        expect_shard_results,
        register_dataset_results,
        shard_results_state,
    )
    from worker.delivery.results.shardreport import DatasetReport, build_dataset_report
    from worker.delivery.results.sink import ResultsSink
    from worker.delivery.results.targets import register_results, results_uri, split_s3_uri
    from worker.delivery.stream.consumer import Entry, StreamConsumer
    from worker.delivery.stream.reader import last_id, read_events, wait_for
    from worker.delivery.webhooks.deliveries import DeliveryStore
    from worker.delivery.webhooks.loops import DeliveryLoops
    from worker.delivery.webhooks.registry import SubscriptionRegistry, check_target
    from worker.delivery.webhooks.replay import (
        ReplayResult,
        parse_time,
        queue_test_delivery,
        replay_events,
        wait_settled,
    )

_EXPORTS = {
    # stream
    "Entry": "worker.delivery.stream.consumer",
    "StreamConsumer": "worker.delivery.stream.consumer",
    "last_id": "worker.delivery.stream.reader",
    "read_events": "worker.delivery.stream.reader",
    "wait_for": "worker.delivery.stream.reader",
    # job status
    "NO_RECORD": "worker.delivery.jobstatus",
    "JobView": "worker.delivery.jobstatus",
    "read_job": "worker.delivery.jobstatus",
    # webhooks
    "SubscriptionRegistry": "worker.delivery.webhooks.registry",
    "check_target": "worker.delivery.webhooks.registry",
    "DeliveryStore": "worker.delivery.webhooks.deliveries",
    "DeliveryLoops": "worker.delivery.webhooks.loops",
    "ReplayResult": "worker.delivery.webhooks.replay",
    "parse_time": "worker.delivery.webhooks.replay",
    "queue_test_delivery": "worker.delivery.webhooks.replay",
    "replay_events": "worker.delivery.webhooks.replay",
    "wait_settled": "worker.delivery.webhooks.replay",
    # results
    "register_results": "worker.delivery.results.targets",
    "results_uri": "worker.delivery.results.targets",
    "split_s3_uri": "worker.delivery.results.targets",
    "ResultsSink": "worker.delivery.results.sink",
    "BackfillReport": "worker.delivery.results.report",
    "build_report": "worker.delivery.results.report",
    "register_dataset_results": "worker.delivery.results.shardledger",
    "dataset_target": "worker.delivery.results.shardledger",
    "expect_shard_results": "worker.delivery.results.shardledger",
    "shard_results_state": "worker.delivery.results.shardledger",
    "read_manifest": "worker.delivery.results.shardfile",
    "DatasetReport": "worker.delivery.results.shardreport",
    "build_dataset_report": "worker.delivery.results.shardreport",
}

__all__ = [
    "NO_RECORD",
    "BackfillReport",
    "DatasetReport",
    "DeliveryLoops",
    "DeliveryStore",
    "Entry",
    "JobView",
    "ReplayResult",
    "ResultsSink",
    "StreamConsumer",
    "SubscriptionRegistry",
    "build_dataset_report",
    "build_report",
    "check_target",
    "dataset_target",
    "expect_shard_results",
    "last_id",
    "parse_time",
    "queue_test_delivery",
    "read_events",
    "read_job",
    "read_manifest",
    "register_dataset_results",
    "register_results",
    "replay_events",
    "results_uri",
    "shard_results_state",
    "split_s3_uri",
    "wait_for",
    "wait_settled",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
