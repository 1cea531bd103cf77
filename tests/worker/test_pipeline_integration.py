"""End to end through real services: producer → Redis → Celery worker → SGLang test server → Redis Stream."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from schemas.events import EventType, event_id
from schemas.job import ImageRef, ModerationJob
from schemas.keys import TASK_MODERATE, VERDICT_STREAM, job_key
from schemas.policy import Policy
from schemas.records import JOB_FINISHED_FIELDS
from schemas.taxonomy import PromptVersion
from tests import images
from tests.conftest import BUCKET, Runner
from tests.services.procs import wait_until
from tests.sglang_server import SimulatedSGLang
from worker.delivery.jobstatus import read_job
from worker.delivery.stream.reader import last_id, wait_for

pytestmark = pytest.mark.integration


def put(s3_client: Any, data: bytes, suffix: str = ".jpg") -> str:
    key = f"it/{uuid.uuid4().hex}{suffix}"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def job(uri: str, **kw: Any) -> ModerationJob:
    return ModerationJob(image=ImageRef.parse(uri), **kw)


def test_a_good_image_yields_one_completed_event_with_a_valid_verdict(runner: Runner, s3_client: Any) -> None:
    data = images.solid((40, 120, 200), (640, 480))
    j = job(put(s3_client, data), metadata={"post": "42"})
    event = runner.one(j)
    assert event.type == EventType.COMPLETED
    assert event_id(j.job_id) == event.id
    assert str(j.image) == event.subject
    assert event.data.verdict is not None
    assert event.data.verdict.rating == "Safe"
    assert event.data.verdict.category == "NA: None applying"
    assert event.data.verdict.rationale
    assert event.data.image.width == 640 and event.data.image.height == 480
    assert len(data) == event.data.image.bytes
    assert event.data.image.sha256 is not None and len(event.data.image.sha256) == 64
    assert event.data.metadata == {"post": "42"}
    assert event.data.model is not None and event.data.model.simulated is True
    assert event.simulated is True
    assert event.data.policy is not None and event.data.policy.name == "default"
    assert len(runner.events_for(j.job_id)) == 1


def test_an_unsafe_image_is_rated_unsafe_with_its_category_and_a_score(runner: Runner, s3_client: Any) -> None:
    event = runner.one(job(put(s3_client, images.solid((220, 30, 30)))))
    assert event.data.verdict is not None
    assert (event.data.verdict.rating, event.data.verdict.category) == ("Unsafe", "O2: Violence, Harm, or Cruelty")
    assert event.data.verdict.unsafe_score is not None and event.data.verdict.unsafe_score > 0.9


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (None, "not_found"),
        (b"this is plain text, not an image", "not_an_image"),
        (images.truncated_jpeg(), "truncated_image"),
        (images.png_bomb(), "decompression_bomb"),
        (b"", "empty_image"),
    ],
    ids=["missing-object", "not-an-image", "truncated-jpeg", "decompression-bomb", "zero-bytes"],
)
def test_bad_input_yields_one_failed_event_with_its_own_code_and_the_worker_keeps_going(
    runner: Runner, s3_client: Any, payload: bytes | None, code: str
) -> None:
    uri = f"s3://{BUCKET}/it/missing-{uuid.uuid4().hex}.jpg" if payload is None else put(s3_client, payload)
    bad = job(uri)
    good = job(put(s3_client, images.solid()))
    events = runner.run(bad, good)
    failed = events[bad.job_id]
    assert failed.type == EventType.FAILED
    assert failed.data.error is not None
    assert code == failed.data.error.code
    assert failed.data.error.retryable is False
    assert failed.data.error.attempts == 1
    assert events[good.job_id].type == EventType.COMPLETED


def test_a_503_is_retried_and_then_succeeds(runner: Runner, sim: SimulatedSGLang, s3_client: Any) -> None:
    sim.add_faults({"status": 503, "message": "The request queue is full"}, {"status": 503})
    j = job(put(s3_client, images.solid()))
    event = runner.one(j)
    assert event.type == EventType.COMPLETED
    rids = [r["rid"].rsplit(".", 1)[0] for r in sim.chat_requests() if str(r["rid"]).startswith(j.job_id)]
    assert [f"{j.job_id}.1", f"{j.job_id}.2", f"{j.job_id}.3"] == rids


def test_persistent_503_fails_as_retryable_after_the_retry_budget(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    sim.add_faults(*[{"status": 503}] * 10)
    event = runner.one(job(put(s3_client, images.solid())))
    assert event.data.error is not None
    assert (event.data.error.code, event.data.error.retryable, event.data.error.attempts) == (
        "inference_unavailable",
        True,
        4,
    )


def test_a_hung_server_times_out_and_the_retry_succeeds(runner: Runner, sim: SimulatedSGLang, s3_client: Any) -> None:
    sim.add_faults({"kind": "hang", "seconds": 30})
    event = runner.one(job(put(s3_client, images.solid())))
    assert event.type == EventType.COMPLETED


def test_invalid_model_output_is_retried_once_then_fails_with_its_code(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    sim.add_faults({"kind": "invalid_json"}, {"kind": "length"})
    event = runner.one(job(put(s3_client, images.solid())))
    assert event.data.error is not None
    assert event.data.error.code == "invalid_model_output"


def test_one_invalid_output_followed_by_a_valid_one_completes(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    sim.add_faults({"kind": "bad_category"})
    assert runner.one(job(put(s3_client, images.solid()))).type == EventType.COMPLETED


def test_a_job_delivered_twice_yields_one_event(runner: Runner, s3_client: Any, redis_client: Any) -> None:
    j = job(put(s3_client, images.solid()))
    runner.queue.send(j)
    runner.queue.send(j)
    runner.run(j)  # sends a third copy and waits for the terminal event
    wait_until(
        lambda: int(redis_client.hget(job_key(j.job_id), "duplicate_deliveries") or 0) >= 2,
        20,
        "both duplicate deliveries processed",
    )
    assert len(runner.events_for(j.job_id)) == 1


def test_the_request_is_image_first_then_the_exact_policy_text_with_schema_and_seed_sampling(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    j = job(put(s3_client, images.solid()), policy=Policy(name="o9-ok", declarations={"O9": "non_violating"}))
    event = runner.one(j)
    [request] = [r for r in sim.chat_requests() if str(r["rid"]).startswith(j.job_id)]
    body = request["body"]
    assert body["part_types"] == ["image_url", "text"]
    assert body["image_prefix"].startswith("data:image/")
    assert Policy(declarations={"O9": "non_violating"}).text(PromptVersion.V1_0) == request["policy_text"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (0.2, 0.95, 50, 500)
    schema = body["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["rating", "category", "rationale"]
    assert event.data.policy is not None and event.data.policy.declarations == {"O9": "non_violating"}


def test_malformed_messages_on_the_queue_fail_as_invalid_job(runner: Runner) -> None:
    """Messages that bypass the producer (wrong schema version, missing image, not an object) still end."""
    queue = runner.queue
    ids = [f"raw-{uuid.uuid4().hex}" for _ in range(3)]
    bodies: list[Any] = [
        {"job_id": ids[0], "schema_version": 99, "image": {"uri": "s3://b/k.jpg"}},
        {"job_id": ids[1]},
        "not an object",
    ]
    after = last_id(runner.queue.redis)
    for task_id, body in zip(ids, bodies, strict=True):
        queue.celery.send_task(TASK_MODERATE, args=[body], queue="guardq.llavaguard-7b", task_id=task_id)
    events = {e.data.job_id: e for e in wait_for(queue.redis, ids, after=after, timeout_s=30)}
    assert set(ids) == set(events)
    for e in events.values():
        assert e.data.error is not None and e.data.error.code == "invalid_job"


def test_unknown_model_and_unknown_policy_fail_at_once_with_their_codes(runner: Runner, s3_client: Any) -> None:
    uri = put(s3_client, images.solid())
    a = job(uri, policy_ref="no-such-policy")
    msg = job(uri).to_message() | {"model": "AIML-TUDA/LlavaGuard-999B"}
    raw_id = msg["job_id"]
    after = last_id(runner.queue.redis)
    runner.queue.celery.send_task(TASK_MODERATE, args=[msg], queue="guardq.llavaguard-7b", task_id=raw_id)
    events = runner.run(a)
    assert events[a.job_id].data.error is not None and events[a.job_id].data.error.code == "policy_unknown"
    [other] = list(wait_for(runner.queue.redis, [raw_id], after=after, timeout_s=30))
    assert other.data.error is not None and other.data.error.code == "model_unknown"


def test_a_finished_job_keeps_a_compact_record_pointing_at_its_event(
    runner: Runner, s3_client: Any, redis_client: Any
) -> None:
    """Status and dedupe need only this; the event itself lives in the stream (and the sinks), not in the hash."""
    j = job(put(s3_client, images.solid()))
    event = runner.one(j)
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(job_key(j.job_id)).items()}
    assert "completed" == state["state"]
    assert set(state) <= set(JOB_FINISHED_FIELDS)
    [(_, fields)] = redis_client.xrange(VERDICT_STREAM, state["stream_id"], state["stream_id"])
    assert event.id == json.loads(fields[b"event"])["id"]
    view = read_job(redis_client, j.job_id)
    assert view is not None and view.event is not None and event.id == view.event["id"]
    assert redis_client.memory_usage(job_key(j.job_id)) <= 300  # bytes, key and value (Redis' own estimate)
