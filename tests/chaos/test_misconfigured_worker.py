"""A misconfigured worker fails no job: it pauses, says why, and leaves the jobs queued for healthy workers.

Each case starts the broken worker alone (production defaults), lets it take jobs, and checks that none ended:
its fleet registry hash reads ``worker_health=unhealthy`` with the cause, its metrics say ``guardq_worker_healthy 0`` and
``guardq_worker_fault{cause=...} 1``, its log names the cause. Then a healthy worker starts and every job
completes, none failed.
"""

from __future__ import annotations

import io
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from producers.fleetview import snapshot
from schemas.job import ImageRef, ModerationJob
from schemas.keys import fleet_node_key
from tests.chaos.cluster import Cluster
from tests.chaos.ledger import record, tally
from tests.chaos.not_sglang import NotSGLang
from tests.services.procs import Service, free_port, start_seaweed, wait_until
from worker.delivery.stream.reader import wait_for

pytestmark = pytest.mark.integration
JOBS = 60
BUCKET = "guardq-misconfig"


@pytest.fixture
def seaweed(tmp_path: Path) -> Iterator[Service]:
    service = start_seaweed(tmp_path / "seaweed")
    yield service
    service.stop()


def _s3_env(service: Service, secret: str) -> dict[str, str]:
    return {
        "GUARDQ_S3_ENDPOINT_URL": service.url,
        "GUARDQ_S3_ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": service.extra["access_key"],
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _s3_jobs(service: Service, count: int) -> list[ModerationJob]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=service.url,
        region_name="us-east-1",
        aws_access_key_id=service.extra["access_key"],
        aws_secret_access_key=service.extra["secret_key"],
    )
    client.create_bucket(Bucket=BUCKET)
    jobs = []
    for i in range(count):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (40 + i, 120, 200)).save(buf, "JPEG")
        client.put_object(Bucket=BUCKET, Key=f"img-{i}.jpg", Body=buf.getvalue())
        jobs.append(ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/img-{i}.jpg")))
    return jobs


def _metric(port: int, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    }


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("sglang_not_found", id="SGLang URL that is not SGLang (404)"),
        pytest.param("sglang_unauthorized", id="wrong SGLang API key (401)", marks=pytest.mark.chaos),
        pytest.param("s3_credentials", id="wrong S3 secret key"),
    ],
)
@pytest.mark.timeout(300)
def test_a_misconfigured_worker_fails_no_job_and_reports_why(
    cluster_factory: type[Cluster], tmp_path: Path, request: pytest.FixtureRequest, case: str
) -> None:
    cluster = cluster_factory(tmp_path, production_defaults=True).start(workers=0, latency_s=0.05)
    metrics_port = free_port()
    bad_env = {"GUARDQ_METRICS_PORT": str(metrics_port), "GUARDQ_METRICS_HOST": "127.0.0.1"}
    good_env: dict[str, str] = {}
    wrong: NotSGLang | None = None
    if case == "s3_credentials":
        seaweed = request.getfixturevalue("seaweed")
        batch = _s3_jobs(seaweed, JOBS)
        bad_env |= _s3_env(seaweed, secret="not-the-secret")
        good_env = _s3_env(seaweed, secret=seaweed.extra["secret_key"])
    else:
        wrong = NotSGLang(404 if case == "sglang_not_found" else 401).start()
        request.addfinalizer(wrong.stop)
        bad_env["GUARDQ_SGLANG_URL"] = wrong.url
        batch = cluster.jobs(JOBS, seed=7)
    ids = [j.job_id for j in batch]
    started = time.monotonic()
    bad = cluster.start_worker("bad", **bad_env)
    after = cluster.send(batch)
    registry = fleet_node_key(bad.url)
    redis = cluster.queue.redis
    wait_until(lambda: redis.hget(registry, "fault") == case.encode(), 60, f"worker reporting {case}", bad.proc)
    assert b"unhealthy" == redis.hget(registry, "worker_health")
    assert redis.hget(registry, "fault_message")
    fleet = snapshot(redis)  # what `guardq fleet status` shows
    assert [case] == [n.get("fault") for n in fleet["nodes"] if n["node"] == bad.url]
    assert 1 == fleet["totals"]["unhealthy"]
    assert [] == list(wait_for(redis, ids, after=after, timeout_s=1.0)), "the broken worker ended jobs"
    healthy = _metric(metrics_port, "guardq_worker_healthy")
    faults = _metric(metrics_port, "guardq_worker_fault")
    assert [0.0] == list(healthy.values())
    assert {1.0} == {v for k, v in faults.items() if f'cause="{case}"' in k}
    unhealthy_lines = [line for line in bad.log.read_text().splitlines() if "worker_unhealthy" in line]
    assert unhealthy_lines and case in unhealthy_lines[0]

    cluster.start_worker("good", **good_env)
    ended = list(wait_for(redis, ids, after=after, timeout_s=120))
    result = tally(
        redis,
        ids,
        scenario="misconfigured_worker",
        variant=f"{JOBS} jobs, {request.node.callspec.id}",
        notes=f"the broken worker alone first (reported {case!r}, ended nothing), then a healthy one; "
        "production defaults",
    )
    result.seconds = round(time.monotonic() - started, 1)
    result.extra = {
        "settings": cluster.describe() | {"workers": 2},
        "cause": case,
        "requests_to_wrong_server": wrong.posts if wrong is not None else None,
        "unhealthy_log_line": unhealthy_lines[0][:300],
    }
    record(result)
    assert len(ended) == JOBS
    assert (JOBS, 0, 0, 0, 0) == (result.completed, result.failed, result.lost, result.duplicated, result.stuck)
