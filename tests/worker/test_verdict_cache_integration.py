"""The verdict cache end to end: a real worker with the cache on, real Redis, S3 and the SGLang test server."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.broker import JobQueue
from schemas.events import STREAM_FIELD, CloudEvent, ImageFacts
from schemas.job import ImageRef, ModerationJob
from schemas.keys import TASK_MODERATE, VERDICT_STREAM, verdict_cache_bucket
from schemas.policy import Policy
from schemas.taxonomy import Declaration
from schemas.verdict import Verdict
from tests import images
from tests.conftest import BUCKET
from tests.services.procs import Service, start_worker
from tests.sglang_server import SimulatedSGLang
from worker.cache import CachedOutcome, CacheKey, VerdictCache
from worker.delivery.stream.reader import last_id, wait_for

pytestmark = pytest.mark.integration
QUEUE = "guardq.test-cache"


@pytest.fixture(scope="module")
def cache_worker(worker_env: dict[str, str], session_dir: Path) -> Iterator[Service]:
    """A second real worker, with the verdict cache on, consuming its own queue."""
    env = {**worker_env, "GUARDQ_VERDICT_CACHE_TTL_S": "3600", "GUARDQ_VERDICT_CACHE_WAIT_S": "10"}
    service = start_worker(env, session_dir / "cache-worker", name="cache", args=[f"--queues={QUEUE}"])
    yield service
    service.stop()


def unique_image() -> bytes:
    rng = random.Random(uuid.uuid4().int)
    return images.solid((rng.randrange(60, 200), rng.randrange(60, 200), rng.randrange(60, 200)))


def put(s3_client: Any, data: bytes) -> ImageRef:
    key = f"cache/{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return ImageRef.parse(f"s3://{BUCKET}/{key}")


def run(queue: JobQueue, *jobs: ModerationJob) -> list[CloudEvent]:
    start = last_id(queue.redis)
    for job in jobs:
        queue.celery.send_task(TASK_MODERATE, args=[job.to_message()], queue=QUEUE, task_id=job.job_id)
    events = {e.data.job_id: e for e in wait_for(queue.redis, [j.job_id for j in jobs], after=start, timeout_s=20)}
    assert len(jobs) == len(events)
    return [events[j.job_id] for j in jobs]


def test_a_cache_hit_publishes_the_cached_verdict_without_any_request_to_sglang(
    cache_worker: Service, job_queue: JobQueue, sim: SimulatedSGLang, s3_client: Any
) -> None:
    data = unique_image()
    (first,) = run(job_queue, ModerationJob(image=put(s3_client, data)))
    assert 1 == len(sim.chat_requests())
    assert first.data.cached is False

    (second,) = run(job_queue, ModerationJob(image=put(s3_client, data), metadata={"again": "yes"}))
    assert 1 == len(sim.chat_requests())  # zero requests for the hit
    assert second.data.cached is True
    assert first.data.verdict == second.data.verdict
    assert first.data.image.sha256 == second.data.image.sha256
    assert {"again": "yes"} == second.data.metadata
    assert second.id != first.id


def test_concurrent_duplicates_wait_for_the_first_instead_of_all_hitting_the_gpu(
    cache_worker: Service, job_queue: JobQueue, sim: SimulatedSGLang, s3_client: Any
) -> None:
    sim.configure(latency_s=0.5)
    data = unique_image()
    events = run(job_queue, *(ModerationJob(image=put(s3_client, data)) for _ in range(6)))
    assert 1 == len(sim.chat_requests())
    assert [False, True, True, True, True, True] == sorted(e.data.cached for e in events)
    assert 1 == len({e.data.verdict for e in events})


def test_another_policy_for_the_same_bytes_is_inferred_again(
    cache_worker: Service, job_queue: JobQueue, sim: SimulatedSGLang, s3_client: Any
) -> None:
    data = unique_image()
    custom = Policy(name="lenient", declarations={"O2": Declaration.NON_VIOLATING})
    a, b = (
        run(job_queue, ModerationJob(image=put(s3_client, data)))[0],
        run(job_queue, ModerationJob(image=put(s3_client, data), policy=custom))[0],
    )
    assert 2 == len(sim.chat_requests())
    assert (False, False) == (a.data.cached, b.data.cached)
    assert a.data.policy is not None and b.data.policy is not None
    assert a.data.policy.sha256 != b.data.policy.sha256


# --- the cache object itself against real Redis ---------------------------------------------------------------

VERDICT = CachedOutcome(
    verdict=Verdict(rating="Safe", category="NA: None applying", rationale="fine", unsafe_score=0.1),
    image=ImageFacts(uri="s3://b/k.jpg", sha256="0" * 64, width=4, height=3, bytes=100, format="JPEG"),
)


def key() -> CacheKey:
    return CacheKey("m", uuid.uuid4().hex, uuid.uuid4().hex)


def test_when_the_first_inference_fails_a_waiting_duplicate_infers_itself(redis_client: redis.Redis) -> None:
    cache = VerdictCache(redis_client, ttl_s=60, wait_s=5, lock_s=30)
    k = key()
    owner_started, release_owner = threading.Event(), threading.Event()
    calls: list[str] = []

    def failing() -> CachedOutcome:
        calls.append("owner")
        owner_started.set()
        release_owner.wait(5)
        raise RuntimeError("SGLang went away")

    def owner() -> None:
        with pytest.raises(RuntimeError):
            cache.verdict(k, failing)

    thread = threading.Thread(target=owner)
    thread.start()
    assert owner_started.wait(5)
    result: list[tuple[CachedOutcome, bool]] = []

    def waiter() -> None:
        result.append(cache.verdict(k, lambda: calls.append("waiter") or VERDICT))  # type: ignore[func-returns-value]

    second = threading.Thread(target=waiter)
    second.start()
    release_owner.set()
    thread.join(5)
    second.join(5)
    assert ["owner", "waiter"] == calls
    assert [(VERDICT, False)] == result


def test_a_duplicate_waits_no_longer_than_the_bound_for_a_stuck_first(redis_client: redis.Redis) -> None:
    cache = VerdictCache(redis_client, ttl_s=60, wait_s=0.3, lock_s=30)
    k = key()
    redis_client.set(f"{k.redis_key()}:lock", "someone-stuck", px=30_000)
    assert (VERDICT, False) == cache.verdict(k, lambda: VERDICT)


def test_a_ttl_of_zero_turns_the_cache_off(redis_client: redis.Redis) -> None:
    cache = VerdictCache(redis_client, ttl_s=0, wait_s=1, lock_s=1)
    k = key()
    assert (VERDICT, False) == cache.verdict(k, lambda: VERDICT)
    assert (VERDICT, False) == cache.verdict(k, lambda: VERDICT)
    assert 0 == redis_client.exists(k.redis_key())


# --- the lock names its holder: a redelivered job and a dead worker's lock are taken over -----------------------


def _lock(k: CacheKey) -> str:
    return f"{k.redis_key()}:lock"


def test_a_redelivered_job_takes_over_the_lock_its_dead_attempt_left_at_once(redis_client: redis.Redis) -> None:
    """Its worker was killed mid-inference: the lock (250 s with defaults) names the job, so it is not waited for."""
    cache = VerdictCache(redis_client, ttl_s=60, wait_s=30, lock_s=250, incarnation=lambda: "w2#2-b")
    k = key()
    redis_client.set(_lock(k), "job-7 w1#1-a dead-token", px=250_000)
    started = time.monotonic()
    assert (VERDICT, False) == cache.verdict(k, lambda: VERDICT, job_id="job-7")
    assert time.monotonic() - started < 1.0
    assert redis_client.get(_lock(k)) is None  # released after the verdict was stored
    hit, cached = cache.verdict(k, lambda: VERDICT, job_id="job-8")
    assert cached and VERDICT.verdict == hit.verdict


def test_a_waiter_takes_over_a_lock_whose_holder_died(redis_client: redis.Redis) -> None:
    """Another job with the same image: it checks the holder's lease about once a second instead of waiting 60 s."""
    cache = VerdictCache(
        redis_client, ttl_s=60, wait_s=30, lock_s=250, incarnation=lambda: "w2#2-b", alive=lambda inc: inc != "w1#1-a"
    )
    k = key()
    redis_client.set(_lock(k), "job-1 w1#1-a dead-token", px=250_000)
    started = time.monotonic()
    assert (VERDICT, False) == cache.verdict(k, lambda: VERDICT, job_id="job-2")
    assert time.monotonic() - started < 3.0


def test_a_waiter_keeps_waiting_for_a_living_holder_of_another_job(redis_client: redis.Redis) -> None:
    cache = VerdictCache(redis_client, ttl_s=60, wait_s=1.5, lock_s=250, alive=lambda inc: True)
    k = key()
    redis_client.set(_lock(k), "job-1 w1#1-a live-token", px=250_000)
    calls: list[str] = []

    def infer() -> CachedOutcome:
        calls.append("inferred")
        return VERDICT

    started = time.monotonic()
    assert (VERDICT, False) == cache.verdict(k, infer, job_id="job-2")
    assert time.monotonic() - started >= 1.5  # waited out the bound, then inferred itself
    assert b"job-1 w1#1-a live-token" == redis_client.get(_lock(k))  # never took the living holder's lock


# --- sharing the stream's Redis, a published entry points at its event for the rationale -------------------------

LONG = CachedOutcome(
    verdict=Verdict(rating="Unsafe", category="O2: Violence, Harm, or Cruelty", rationale="r" * 300, unsafe_score=0.9),
    image=VERDICT.image,
)


def _entry(client: redis.Redis, k: CacheKey) -> bytes:
    """The stored entry of a key, read where the cache files it (today's bucket, its shard)."""
    from worker.cache import DAY, _field, _shard  # the layout under test

    name = k.redis_key()
    raw = client.hget(verdict_cache_bucket(int(time.time() // DAY), _shard(name)), _field(name))
    assert raw is not None
    return raw


def _publish(client: redis.Redis, outcome: CachedOutcome) -> str:
    """A verdict event on the stream as the publish step writes it (the field, the JSON shape)."""
    body = {"data": {"job_id": uuid.uuid4().hex, "verdict": outcome.verdict.model_dump(mode="json")}}
    return client.xadd(VERDICT_STREAM, {STREAM_FIELD: json.dumps(body)}).decode()


def test_sharing_the_streams_redis_a_published_entry_drops_its_rationale_and_a_hit_reads_it_from_the_event(
    redis_client: redis.Redis,
) -> None:
    cache = VerdictCache(redis_client, ttl_s=3600, wait_s=1, lock_s=10, stream=redis_client)
    k = key()
    assert (LONG, False) == cache.verdict(k, lambda: LONG)
    assert len(_entry(redis_client, k)) > 300  # whole until its job has published
    sid = _publish(redis_client, LONG)
    cache.compact(k, LONG, sid)
    assert len(_entry(redis_client, k)) < 100  # the rationale lives in the event only
    hit, cached = cache.verdict(k, lambda: pytest.fail("a hit must not infer"))
    assert cached and LONG.verdict == hit.verdict

    redis_client.xdel(VERDICT_STREAM, sid)  # the stream trimmed the event: the entry cannot replay it any more
    calls: list[str] = []
    assert (LONG, False) == cache.verdict(k, lambda: calls.append("infer") or LONG)  # type: ignore[func-returns-value]
    assert ["infer"] == calls and len(_entry(redis_client, k)) > 300  # inferred and cached whole again


def test_a_cache_on_a_redis_of_its_own_keeps_whole_entries_for_its_ttl(redis_client: redis.Redis) -> None:
    cache = VerdictCache(redis_client, ttl_s=3600, wait_s=1, lock_s=10)  # no stream: the cache's own Redis
    k = key()
    cache.verdict(k, lambda: LONG)
    cache.compact(k, LONG, _publish(redis_client, LONG))
    assert len(_entry(redis_client, k)) > 300
