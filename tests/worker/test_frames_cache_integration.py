"""Each distinct frame is cached on its own: a repeated file, or another file with the same frames, costs no call.

A real worker with the verdict cache on (its own queue), real Redis, S3 and the SGLang test server.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from producers.broker import JobQueue
from schemas.events import CloudEvent
from schemas.job import ImageRef, ModerationJob
from schemas.keys import TASK_MODERATE
from tests import motion
from tests.conftest import BUCKET
from tests.services.procs import Service, start_worker
from tests.sglang_server import SimulatedSGLang
from worker.delivery.stream.reader import last_id, wait_for

pytestmark = pytest.mark.integration
QUEUE = "guardq.test-frames-cache"


@pytest.fixture(scope="module")
def cache_worker(worker_env: dict[str, str], session_dir: Path) -> Iterator[Service]:
    env = {**worker_env, "GUARDQ_VERDICT_CACHE_TTL_S": "3600", "GUARDQ_VERDICT_CACHE_WAIT_S": "10"}
    service = start_worker(env, session_dir / "frames-cache-worker", name="frames-cache", args=[f"--queues={QUEUE}"])
    yield service
    service.stop()


def moderate(queue: JobQueue, s3_client: Any, data: bytes) -> tuple[ModerationJob, CloudEvent]:
    key = f"frames-cache/{uuid.uuid4().hex}"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    job = ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/{key}"))
    start = last_id(queue.redis)
    queue.celery.send_task(TASK_MODERATE, args=[job.to_message()], queue=QUEUE, task_id=job.job_id)
    [event] = list(wait_for(queue.redis, [job.job_id], after=start, timeout_s=30))
    return job, event


def calls(sim: SimulatedSGLang, job: ModerationJob) -> int:
    return sum(1 for r in sim.chat_requests() if str(r["rid"]).startswith(job.job_id + "."))


def test_a_repeated_animation_and_another_file_with_the_same_frames_cost_no_model_call(
    cache_worker: Service, job_queue: JobQueue, s3_client: Any, sim: SimulatedSGLang
) -> None:
    unique = uuid.uuid4().int % 200  # frames no other test has cached
    frames = [motion.frame(i + unique) for i in range(12)]
    frames[6] = motion.frame(0, unsafe=True)
    first_file = _gif(frames, duration_ms=80)
    same_frames_other_file = _gif(frames, duration_ms=120)  # other bytes (timing), identical pixels per frame
    first_job, first = moderate(job_queue, s3_client, first_file)
    assert first.data.frames is not None and first.data.verdict is not None
    assert (False, first.data.frames.moderated) == (first.data.cached, calls(sim, first_job))
    for data in (first_file, same_frames_other_file):
        job, again = moderate(job_queue, s3_client, data)
        assert again.data.frames is not None and again.data.verdict is not None
        assert (True, 0) == (again.data.cached, calls(sim, job))
        assert all(r.cached for r in again.data.frames.results)
        assert first.data.verdict == again.data.verdict
        assert [r.index for r in first.data.frames.results] == [r.index for r in again.data.frames.results]


def _gif(images: list[Image.Image], *, duration_ms: int) -> bytes:
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buf.getvalue()
