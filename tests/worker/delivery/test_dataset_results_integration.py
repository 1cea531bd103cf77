"""Per-shard Parquet results against real Redis and SeaweedFS, with verdict events published directly (no GPU
worker): a shard's file appears once its last row is in and not before, each job is one row however often its
event is seen, and a sink that dies between writing and recording a file leaves no gap and no duplicate."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis as redis_lib
from botocore.exceptions import ClientError

from producers.backfill.checkpoint import BackfillStore
from schemas.backfill import BackfillOptions
from schemas.dataset import DatasetSample
from schemas.events import CloudEvent
from schemas.keys import backfill_shards_key
from schemas.models import DEFAULT_MODEL
from schemas.settings import Settings
from tests.conftest import BUCKET
from tests.worker.delivery.factory import make_event, publish
from worker.delivery.keys import dataset_staged_key, dataset_unwritten_key
from worker.delivery.results.shardfile import read_manifest, read_results
from worker.delivery.results.shardledger import register_dataset_results
from worker.delivery.results.shards import ShardResults
from worker.delivery.results.sink import ResultsSink

pytestmark = pytest.mark.integration


class Crash(Exception):
    """Stands for the sink process dying right after its PUT."""


class Dataset:
    """A backfill of two shards as the runner leaves it: options, shard records, the unwritten set."""

    def __init__(self, client: redis_lib.Redis, jobs: dict[str, int]) -> None:
        self.root = f"dsres-{uuid.uuid4().hex[:8]}/"
        self.results = f"s3://{BUCKET}/{self.root}verdicts"
        options = BackfillOptions(
            source=f"s3://{BUCKET}/{self.root}in/",
            mode="list",
            bucket=BUCKET,
            prefix=f"{self.root}in/",
            model=DEFAULT_MODEL,
            queue="unused",
            format="webdataset",
            results=self.results,
            results_format="parquet",
        )
        self.store = BackfillStore(client)
        self.record = self.store.create(options)
        self.id = self.record.backfill_id
        register_dataset_results(client, self.id, self.results, options.prefix)
        self.client, self.jobs = client, jobs

    def shard(self, name: str) -> str:
        return f"{self.root}in/{name}"

    def sent(self, name: str) -> None:
        """What the runner writes with a shard's last batch."""
        record = {"uri": f"s3://{BUCKET}/{self.shard(name)}", "jobs": self.jobs[name], "rows": self.jobs[name]}
        self.client.hset(backfill_shards_key(self.id), self.shard(name), json.dumps(record | {"missing": 0}))
        self.client.sadd(dataset_unwritten_key(self.id), self.shard(name))

    def event(self, name: str, index: int, *, failed: bool = False) -> CloudEvent:
        event = make_event(backfill_id=self.id, failed=failed, job_id=f"{self.id}-{name}-{index}")
        sample = DatasetSample(shard=f"s3://{BUCKET}/{self.shard(name)}", key=f"{name}-{index:03d}", index=index)
        return event.model_copy(update={"data": event.data.model_copy(update={"sample": sample})})

    def finish(self) -> None:
        self.record.progress.state = "finished"
        self.store.save_state(self.record)


def drain(sink: ResultsSink, rounds: int = 20) -> None:
    """Read until the stream has nothing new for this sink, then sweep (bounded)."""
    for _ in range(rounds):
        if sink.step() == 0:
            break
    sink.shards.sweep()


@pytest.fixture
def sink_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"results_batch_s": 0.05})


def file_of(s3: Any, ds: Dataset, name: str) -> list[dict[str, Any]] | None:
    manifest = read_manifest(s3, ds.results)
    for shard in (manifest or {}).get("shards", []):
        if shard["shard"] == ds.shard(name):
            return list(read_results(s3, shard["object"]).to_pylist())
    return None


def test_a_shard_file_is_written_once_its_last_row_is_in_with_each_job_once(
    redis_client: redis_lib.Redis, s3_client: Any, sink_settings: Settings
) -> None:
    ds = Dataset(redis_client, {"00000.tar": 3, "00001.tar": 2})
    sink = ResultsSink(redis_client, s3_client, sink_settings, consumer=f"dsres-{ds.id}")
    sink.start()
    publish(redis_client, ds.event("00000.tar", 1))
    publish(redis_client, ds.event("00000.tar", 0, failed=True))
    publish(redis_client, ds.event("00000.tar", 0, failed=True))  # the same event twice on the stream
    ds.sent("00000.tar")
    drain(sink)
    assert file_of(s3_client, ds, "00000.tar") is None  # 2 of its 3 rows: not written, not listed
    assert 2 == redis_client.hlen(dataset_staged_key(ds.id, ds.shard("00000.tar")))

    publish(redis_client, ds.event("00000.tar", 2))
    for i in range(2):
        publish(redis_client, ds.event("00001.tar", i))
    drain(sink)
    rows = file_of(s3_client, ds, "00000.tar")
    assert rows is not None
    assert (["00000.tar-000", "00000.tar-001", "00000.tar-002"], ["not_found", None, None]) == (
        [r["key"] for r in rows],
        [r["error_code"] for r in rows],
    )
    assert file_of(s3_client, ds, "00001.tar") is None  # all its rows are in, but the runner has not sent it all
    assert not redis_client.exists(dataset_staged_key(ds.id, ds.shard("00000.tar")))

    publish(redis_client, ds.event("00000.tar", 2))  # a late duplicate of a written shard changes nothing
    ds.sent("00001.tar")
    ds.finish()
    drain(sink)
    manifest = read_manifest(s3_client, ds.results)
    assert manifest is not None and manifest["complete"] is True
    assert [(ds.shard("00000.tar"), 3, 1), (ds.shard("00001.tar"), 2, 0)] == [
        (s["shard"], s["rows"], s["failed"]) for s in manifest["shards"]
    ]
    assert not redis_client.exists(dataset_staged_key(ds.id, ds.shard("00000.tar")))


class DiesAfterPut(ShardResults):
    def _put_once(self, bucket: str, key: str, body: bytes) -> None:
        super()._put_once(bucket, key, body)
        raise Crash


def test_a_sink_that_dies_after_its_put_leaves_the_shard_to_the_next_sink_with_the_same_rows(
    redis_client: redis_lib.Redis, s3_client: Any, sink_settings: Settings
) -> None:
    ds = Dataset(redis_client, {"00000.tar": 4})
    doomed = ResultsSink(redis_client, s3_client, sink_settings, consumer=f"doomed-{ds.id}")
    doomed.shards = DiesAfterPut(
        redis_client, s3_client, sink_settings, stream=doomed.reader.stream, group=doomed.reader.group
    )
    doomed.start()
    ds.sent("00000.tar")
    for i in range(4):
        publish(redis_client, ds.event("00000.tar", i, failed=i == 3))
    with pytest.raises(Crash):
        drain(doomed)
    assert redis_client.sismember(dataset_unwritten_key(ds.id), ds.shard("00000.tar"))  # not recorded as written
    lock_keys = redis_client.keys(f"guardq:dataset:{ds.id}:lock:*")
    assert [] == lock_keys  # the lock went with the dying call; a killed process's would expire

    ds.finish()
    heir = ResultsSink(redis_client, s3_client, sink_settings, consumer=f"heir-{ds.id}")
    heir.start()  # its start-up sweep finishes the shard: the PUT finds the same file there already
    rows = file_of(s3_client, ds, "00000.tar")
    assert rows is not None and [f"00000.tar-{i:03d}" for i in range(4)] == [r["key"] for r in rows]
    assert [None, None, None, "not_found"] == [r["error_code"] for r in rows]
    assert not redis_client.sismember(dataset_unwritten_key(ds.id), ds.shard("00000.tar"))
    manifest = read_manifest(s3_client, ds.results)
    assert manifest is not None and (True, 4) == (manifest["complete"], manifest["rows"])


class S3DownOnce(ShardResults):
    """The first PUT of a results file meets an S3 outage (503)."""

    failures = 1

    def _put_once(self, bucket: str, key: str, body: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise ClientError(
                {"Error": {"Code": "ServiceUnavailable"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"
            )
        super()._put_once(bucket, key, body)


def test_an_s3_outage_while_writing_defers_the_shard_to_the_next_sweep_without_stopping_the_sink(
    redis_client: redis_lib.Redis, s3_client: Any, sink_settings: Settings
) -> None:
    ds = Dataset(redis_client, {"00000.tar": 2})
    slow = sink_settings.model_copy(update={"results_batch_s": 600.0})  # no periodic sweep inside this test's steps
    sink = ResultsSink(redis_client, s3_client, slow, consumer=f"outage-{ds.id}")
    sink.shards = S3DownOnce(redis_client, s3_client, slow, stream=sink.reader.stream, group=sink.reader.group)
    sink.start()
    ds.sent("00000.tar")
    ds.finish()
    for i in range(2):
        publish(redis_client, ds.event("00000.tar", i))
    for _ in range(20):  # the step that stages the last row meets the outage; the sink keeps running
        if sink.step() == 0:
            break
    assert file_of(s3_client, ds, "00000.tar") is None
    assert 2 == redis_client.hlen(dataset_staged_key(ds.id, ds.shard("00000.tar")))  # the rows are safe

    assert 1 == sink.shards.sweep()
    rows = file_of(s3_client, ds, "00000.tar")
    assert rows is not None and ["00000.tar-000", "00000.tar-001"] == [r["key"] for r in rows]
