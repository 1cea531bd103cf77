"""Dataset mode end to end against real SeaweedFS, Redis, results sink and workers.

An img2dataset-style collection in both layouts (WebDataset tar shards with Parquet sidecars; Parquet files with the
image bytes), with a corrupt image member, a cut-off member, samples without an image, a sidecar row the tar lacks,
a download the sidecar marks as failed and a tar shard whose header is damaged. Both backfills are killed with
SIGKILL mid-shard, resumed, and the worker draining them is killed with SIGKILL while jobs are in flight; the
results must then hold exactly one row per sample, with the right verdict or error code, and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from producers.backfill.checkpoint import BackfillStore
from schemas.events import CloudEvent
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET
from tests.producers.datasets import header_offset, image_table, img2dataset_sample, sidecar, tar_shard
from tests.producers.test_backfill_integration import GUARDQ, backfill_filling, cli_env, guardq
from tests.services.procs import ROOT, Service, start_redis, start_worker, wait_until
from tests.sglang_server import SimulatedSGLang
from tests.worker.delivery.test_results_integration import RunningSink
from worker.delivery.results.shardfile import read_manifest, read_results
from worker.delivery.results.sink import ResultsSink
from worker.delivery.stream.reader import last_id

pytestmark = pytest.mark.integration

SAFE, UNSAFE = "Safe", "Unsafe"


def blue(i: int) -> bytes:
    return images.solid((40, 120, 150 + i))  # distinct bytes per sample (no verdict-cache shortcut), all Safe


def red(i: int) -> bytes:
    return images.solid((220, 30 + i % 10, 30))  # the SGLang test server: O2, Unsafe


@dataclass
class Collection:
    """What was uploaded, and what each row must end as: ``Safe``/``Unsafe`` or the error code."""

    prefix: str
    expected: dict[str, dict[str, str]] = field(default_factory=dict)  # shard key -> {sample key: outcome}
    problems: dict[str, str] = field(default_factory=dict)  # shard key -> words its status must report


def put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def webdataset_collection(s3: Any, root: str) -> Collection:
    col = Collection(f"{root}wds/")
    p = col.prefix
    truncated = images.truncated_jpeg()
    shard0 = [
        img2dataset_sample("w0-000", blue(0)),
        img2dataset_sample("w0-001", red(1)),
        img2dataset_sample("w0-002", b"\xff\xd8 this member is not a JPEG"),  # corrupt member
        img2dataset_sample("w0-003", truncated),  # a JPEG cut short
        img2dataset_sample("w0-004", None),  # a sample without its image
        img2dataset_sample("w0-005", images.solid((30, 30, 30))),
    ]
    statuses = [(k, "success") for k, _ in shard0] + [("w0-006", "failed_to_download"), ("w0-007", "success")]
    put(s3, f"{p}00000.parquet", sidecar(statuses))  # w0-007: "downloaded", yet not in the tar
    put(s3, f"{p}00000.tar", tar_shard(shard0))
    col.expected[f"{p}00000.tar"] = {
        "w0-000": SAFE,
        "w0-001": UNSAFE,
        "w0-002": "not_an_image",
        "w0-003": "truncated_image",
        "w0-004": "not_found",
        "w0-005": UNSAFE,
        "w0-007": "not_found",
    }
    shard1 = [img2dataset_sample(f"w1-{i:03d}", blue(10 + i) if i % 2 else red(i)) for i in range(6)]
    put(s3, f"{p}00001.parquet", sidecar([(k, "success") for k, _ in shard1]))
    put(s3, f"{p}00001.tar", tar_shard(shard1))
    col.expected[f"{p}00001.tar"] = {f"w1-{i:03d}": SAFE if i % 2 else UNSAFE for i in range(6)}
    shard2 = tar_shard([img2dataset_sample(f"w2-{i:03d}", blue(20 + i)) for i in range(5)])
    damaged = bytearray(shard2)
    at = header_offset(shard2, "w2-003.jpg")
    damaged[at : at + 16] = b"\x00damaged header!"
    put(s3, f"{p}00002.tar", bytes(damaged))  # no sidecar: the rows after the damage cannot be known
    col.expected[f"{p}00002.tar"] = {f"w2-{i:03d}": SAFE for i in range(3)}
    col.problems[f"{p}00002.tar"] = f"corrupt tar header at byte {at:,}"
    return col


def parquet_collection(s3: Any, root: str) -> Collection:
    col = Collection(f"{root}pq/")
    rows0: list[tuple[str, bytes | None]] = [
        ("p0-000", blue(30)),
        ("p0-001", red(2)),
        ("p0-002", None),  # no image bytes in the row
        ("p0-003", b"definitely not an image"),
        ("p0-004", blue(31)),
        ("p0-005", images.solid((30, 30, 30))),
        ("p0-006", blue(32)),
        ("p0-007", red(3)),
    ]
    put(s3, f"{col.prefix}00000.parquet", image_table(rows0, row_group_size=3))
    col.expected[f"{col.prefix}00000.parquet"] = {
        "p0-000": SAFE,
        "p0-001": UNSAFE,
        "p0-002": "not_found",
        "p0-003": "not_an_image",
        "p0-004": SAFE,
        "p0-005": UNSAFE,
        "p0-006": SAFE,
        "p0-007": UNSAFE,
    }
    rows1 = [(f"p1-{i:03d}", red(i) if i == 2 else blue(40 + i)) for i in range(4)]
    put(s3, f"{col.prefix}00001.parquet", image_table(rows1))
    col.expected[f"{col.prefix}00001.parquet"] = {k: UNSAFE if k == "p1-002" else SAFE for k, _ in rows1}
    return col


def dedicated_worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    """Production defaults (retries, backoff, fetch and SGLang timeouts, the reconciler every 15 s) but for the
    services, and two changes the kill needs: a visibility timeout short enough to see the killed worker's jobs come
    back within the test (10 s, not 3600 s), and no verdict cache (a worker killed while computing a verdict holds
    that image's cache lock, so its redelivered job would first wait GUARDQ_VERDICT_CACHE_WAIT_S, 60 s, for it).

    The reconciler re-sends a job the kill caught between kombu's BRPOP and its bookkeeping (in no queue, in no
    unacked hash: seen here about once in fifteen runs); it sweeps every open job of its Redis, which is why this
    test has a Redis of its own."""
    services = [
        "GUARDQ_REDIS_URL",
        "GUARDQ_SGLANG_URL",
        "GUARDQ_S3_ENDPOINT_URL",
        "GUARDQ_S3_ADDRESSING_STYLE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "GUARDQ_UPLOAD_STORE",
        "GUARDQ_LOG_FORMAT",
    ]
    env = {k: worker_env[k] for k in services}
    return env | {"GUARDQ_VISIBILITY_TIMEOUT_S": "10", "GUARDQ_VERDICT_CACHE_TTL_S": "0", "GUARDQ_METRICS_PORT": "0"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, redis_lib.Redis]]:
    """A Redis for this test alone (its workers run the reconciler, which sweeps every open job it finds)."""
    service = start_redis(tmp_path / "redis")
    client = redis_lib.Redis.from_url(service.url)
    yield service.url, client
    client.close()
    service.stop()


def start_backfill(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [GUARDQ, "backfill", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def kill_at_cap(proc: subprocess.Popen[str], client: redis_lib.Redis, queue: str, cap: int) -> None:
    """SIGKILL the backfill once it filled ``queue`` to its cap and waits there (mid-shard, by construction)."""
    try:
        wait_until(lambda: client.llen(queue) >= cap, 60, f"backfill into {queue} at its cap", proc)  # type: ignore[arg-type]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()


def events_of(client: redis_lib.Redis, backfills: set[str], after: str) -> Counter[str]:
    """How many terminal events each job of these backfills has on the stream (entries after ``after``)."""
    counts: Counter[str] = Counter()
    for _, fields in client.xrange("guardq:verdicts", min=f"({after}"):
        event = CloudEvent.model_validate_json(fields[b"event"])
        if event.data.backfill_id in backfills:
            counts[event.data.job_id] += 1
    return counts


def outcomes(table_rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["key"]: r["error_code"] or r["rating"] for r in table_rows}


def test_a_killed_and_resumed_dataset_backfill_gives_every_row_exactly_once_with_its_verdict(
    worker_env: dict[str, str],
    settings: Settings,
    own_redis: tuple[str, redis_lib.Redis],
    s3_client: Any,
    sim: SimulatedSGLang,
    tmp_path: Path,
) -> None:
    redis_url, redis_client = own_redis
    worker_env = worker_env | {"GUARDQ_REDIS_URL": redis_url}
    settings = settings.model_copy(update={"redis_url": redis_url})
    queues = (f"guardq.test.ds.{uuid.uuid4().hex[:8]}", f"guardq.test.ds.{uuid.uuid4().hex[:8]}")
    root = f"ds-{uuid.uuid4().hex[:8]}/"
    start = last_id(redis_client)
    wds, pq = webdataset_collection(s3_client, root), parquet_collection(s3_client, root)
    env = cli_env(worker_env)
    results = {"wds": f"s3://{BUCKET}/{root}verdicts-wds", "pq": f"s3://{BUCKET}/{root}verdicts-pq"}
    cap = 5
    common = ["--max-pending", str(cap), "--page-size", "4", "--results-format", "parquet", "--json"]
    sink_settings = settings.model_copy(update={"results_batch_events": 5, "results_batch_s": 0.3})
    sim.configure(latency_s=0.4)
    workers: list[Service] = []
    with RunningSink(ResultsSink(redis_client, s3_client, sink_settings, consumer=f"ds-{root[3:-1]}")):
        # 1. Both backfills fill their queue (nobody drains it yet) and are killed with SIGKILL mid-shard.
        first = {
            "wds": start_backfill(env, f"s3://{BUCKET}/{wds.prefix}", "--format", "webdataset", "--queue", queues[0],
                                  "--results", results["wds"], *common),
            "pq": start_backfill(env, f"s3://{BUCKET}/{pq.prefix}", "--format", "parquet", "--image-column", "jpg",
                                 "--queue", queues[1], "--results", results["pq"], *common),
        }  # fmt: skip
        for name, queue in zip(first, queues, strict=True):
            kill_at_cap(first[name], redis_client, queue, cap)
        ids = {name: backfill_filling(redis_client, queue) for name, queue in zip(first, queues, strict=True)}
        store = BackfillStore(redis_client)
        for bid in ids.values():
            killed = store.load(bid).progress
            assert (0, cap, "running") == (killed.shards, killed.enqueued, killed.state)  # mid first shard
            assert killed.shard_key and cap == killed.shard_pos

        # 2. A worker drains both queues while both backfills resume; it is killed with SIGKILL mid-flight.
        worker_args = [f"--queues={queues[0]},{queues[1]}", "--concurrency=8"]
        w_env = dedicated_worker_env(worker_env)
        workers.append(start_worker(w_env, Path(str(tmp_path)) / "w", name="ds1", args=worker_args))
        resumed = {
            name: start_backfill(env, "--resume", bid, "--max-pending", "4", "--json") for name, bid in ids.items()
        }
        wait_until(lambda: sum(events_of(redis_client, set(ids.values()), start).values()) >= 6, 60, "first verdicts")
        sim.configure(latency_s=5.0)  # the worker's next jobs stay in inference: the kill catches them in flight
        wait_until(lambda: sim.running >= 2, 30, "jobs in flight on the first worker")
        os.killpg(workers[0].proc.pid, signal.SIGKILL)
        workers[0].proc.wait(10)
        sim.configure(latency_s=0.4)
        workers.append(start_worker(w_env, Path(str(tmp_path)) / "w", name="ds2", args=worker_args))
        try:
            for name, proc in resumed.items():
                out, err = proc.communicate(timeout=120)
                assert 0 == proc.returncode, err
                summary = json.loads(out)
                jobs = sum(len(rows) for rows in (wds if name == "wds" else pq).expected.values())
                assert ("finished", ids[name], jobs, jobs - cap) == (
                    summary["state"], summary["backfill_id"], summary["enqueued"], summary["enqueued_this_run"]
                )  # fmt: skip

            # 3. Every shard's results file appears once its last row is in; the manifests say complete.
            for name in ids:
                wait_until(lambda n=name: (read_manifest(s3_client, results[n]) or {}).get("complete") is True, 90,  # type: ignore[misc]
                           f"{name} results complete")  # fmt: skip
        finally:
            for service in workers[1:]:
                service.stop()

    for name, col in (("wds", wds), ("pq", pq)):
        manifest = read_manifest(s3_client, results[name])
        assert manifest is not None and ids[name] == manifest["backfill_id"]
        assert sorted(col.expected) == [s["shard"] for s in manifest["shards"]]
        for shard in manifest["shards"]:
            got = read_results(s3_client, shard["object"]).to_pylist()
            expected = col.expected[shard["shard"]]
            assert list(expected) == [r["key"] for r in got], shard["shard"]  # every row once, in shard order
            assert expected == outcomes(got), shard["shard"]
            assert len(got) == len({r["job_id"] for r in got}) == shard["rows"]
            stem = shard["shard"][len(col.prefix) :].rsplit(".", 1)[0]
            assert f"{results[name]}/{stem}.parquet" == shard["object"]  # same name as its input shard
    every = events_of(redis_client, set(ids.values()), start)
    total = sum(len(rows) for col in (wds, pq) for rows in col.expected.values())
    assert (total, {1}) == (len(every), set(every.values()))  # one terminal event per row, no more
    redelivered = [int(redis_client.hget(f"guardq:job:{j}", "deliveries") or 0) for j in every]
    assert max(redelivered) >= 2  # the killed worker's jobs were delivered again, and still ended once

    # 4. Status per shard, report with failed samples and the keep list.
    status = guardq("backfill", "status", ids["wds"], "--json", env=env)
    shards = {s["shard"]: s for s in json.loads(status.stdout)["shards"]}
    for key, expected in wds.expected.items():
        failed = sum(1 for v in expected.values() if v not in (SAFE, UNSAFE))
        assert (len(expected), failed, 0, "written") == (
            shards[key]["jobs"], shards[key]["failed"], shards[key]["in_flight"], shards[key]["results"]
        )  # fmt: skip
    assert {"not_downloaded": 1} == shards[f"{wds.prefix}00000.tar"]["skipped"]
    assert 2 == shards[f"{wds.prefix}00000.tar"]["missing"]
    assert any(wds.problems[f"{wds.prefix}00002.tar"] in p for p in shards[f"{wds.prefix}00002.tar"]["problems"])
    text = guardq("backfill", "status", ids["wds"], "--shards", env=env).stdout
    assert f"{wds.prefix}00002.tar: 3 jobs" in text and "problem: corrupt tar header" in text

    keep = tmp_path / "keep.txt"
    failed_csv = tmp_path / "failed.csv"
    report = guardq("backfill", "report", ids["wds"], "--keep-list", str(keep), "--failed", str(failed_csv), "--json",
                    env=env)  # fmt: skip
    assert 0 == report.returncode, report.stderr
    counts = json.loads(report.stdout)
    safe = [k for shard in sorted(wds.expected) for k, v in wds.expected[shard].items() if v == SAFE]
    assert safe == keep.read_text().split()
    failures = {k: v for rows in wds.expected.values() for k, v in rows.items() if v not in (SAFE, UNSAFE)}
    assert (True, len(failures), dict(Counter(failures.values()))) == (
        counts["complete"], counts["failed"], counts["errors"]
    )  # fmt: skip
    assert failures == {row["key"]: row["error_code"] for row in csv_rows(failed_csv)}


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))
