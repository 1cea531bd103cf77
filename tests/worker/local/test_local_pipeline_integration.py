"""End to end with ``GUARDQ_BACKEND=transformers``: producer → Redis → Celery worker running the tiny LLaVA in
process → Redis Stream. Real Redis, real S3, a real worker subprocess; no SGLang anywhere."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producers.broker import JobQueue
from schemas.events import EventType
from schemas.job import ImageRef, ModerationJob
from schemas.policy import Declaration, Policy
from schemas.taxonomy import CATEGORY_NAMES, RATINGS
from tests import images
from tests.conftest import BUCKET, Runner
from tests.services.procs import Service, start_worker
from tests.worker.local.conftest import TINY_MODEL, tiny_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_worker(worker_env: dict[str, str], tiny_llava_dir: Path, session_dir: Path) -> Iterator[Service]:
    """A worker serving the tiny checkpoint with the transformers backend (its own queues: the v1.1 model's)."""
    env = worker_env | tiny_env(tiny_llava_dir) | {"GUARDQ_WORKER_CONCURRENCY": "4", "GUARDQ_LOCAL_BATCH_WAIT_MS": "50"}
    service = start_worker(
        env, session_dir / "local-workers", name="local", args=["--ready-timeout=120"], timeout_s=150
    )
    yield service
    service.stop()


@pytest.fixture
def local_runner(local_worker: Service, job_queue: JobQueue) -> Runner:
    return Runner(job_queue)


def put(s3_client: Any, data: bytes) -> str:
    key = f"local/{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def job(uri: str, **kw: Any) -> ModerationJob:
    return ModerationJob(image=ImageRef.parse(uri), model=TINY_MODEL, **kw)


def test_every_job_ends_in_one_completed_event_with_a_valid_verdict_from_the_local_model(
    local_runner: Runner, s3_client: Any, tiny_llava_dir: Path
) -> None:
    colors = [(40, 120, 200), (220, 30, 30), (0, 0, 0), (250, 250, 250), (10, 200, 90), (120, 60, 10)]
    jobs = [
        job(put(s3_client, images.solid(c, (320 + 40 * i, 240))), metadata={"n": str(i)}) for i, c in enumerate(colors)
    ]
    events = local_runner.run(*jobs, timeout_s=120)
    for j in jobs:
        event = events[j.job_id]
        assert EventType.COMPLETED == event.type, event.data.error
        verdict = event.data.verdict
        assert verdict is not None
        assert verdict.rating in RATINGS and verdict.category in CATEGORY_NAMES
        assert isinstance(verdict.rationale, str)
        assert verdict.unsafe_score is not None and 0.0 <= verdict.unsafe_score <= 1.0
        model = event.data.model
        assert model is not None
        assert (TINY_MODEL, "transformers", str(tiny_llava_dir)) == (model.name, model.backend, model.served_model)
        assert not event.simulated and model.simulated is False
        assert 1 == len(local_runner.events_for(j.job_id))


def test_a_verdict_only_custom_policy_gets_its_verdict_without_rationale(local_runner: Runner, s3_client: Any) -> None:
    policy = Policy(name="o8-ok", declarations={"O8": Declaration.NON_VIOLATING}, verdict_only=True)
    plain = job(put(s3_client, images.solid((90, 90, 90))))
    custom = job(put(s3_client, images.solid((30, 60, 90))), policy=policy)
    events = local_runner.run(plain, custom, timeout_s=90)
    assert events[custom.job_id].data.verdict is not None
    assert events[custom.job_id].data.verdict.rationale is None
    assert events[custom.job_id].data.policy is not None and "o8-ok" == events[custom.job_id].data.policy.name
    assert events[plain.job_id].data.verdict is not None and events[plain.job_id].data.verdict.rationale is not None


def test_a_bad_image_still_fails_with_its_own_code_under_the_local_backend(
    local_runner: Runner, s3_client: Any
) -> None:
    bad = job(put(s3_client, images.truncated_jpeg()))
    good = job(put(s3_client, images.solid()))
    events = local_runner.run(bad, good, timeout_s=90)
    assert EventType.FAILED == events[bad.job_id].type
    assert events[bad.job_id].data.error is not None and "truncated_image" == events[bad.job_id].data.error.code
    assert EventType.COMPLETED == events[good.job_id].type
