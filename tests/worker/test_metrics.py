"""Worker metrics as Prometheus sees them (exposition text parsed with prometheus_client's parser)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis as redis_lib
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.errors import ErrorCode, PermanentError
from schemas.events import CloudEvent, ModelInfo, Timings
from schemas.job import ImageRef, ModerationJob
from schemas.policy import Policy, PolicyInfo
from schemas.taxonomy import PromptVersion
from schemas.verdict import Verdict
from worker.eventbuild import completed_event, failed_event, image_facts
from worker.metrics import JobStats, QueueDepthCollector, WorkerMetrics
from worker.serverwatch import ServerWatch

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Sample:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Sample, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def completed(timings: Timings) -> CloudEvent:
    job = ModerationJob(image=ImageRef.parse("s3://b/k.jpg"))
    return completed_event(
        source="urn:test",
        job=job,
        image=image_facts("s3://b/k.jpg"),
        verdict=Verdict(rating="Safe", category="NA: None applying", rationale="ok"),
        policy=PolicyInfo.of(Policy(), PromptVersion.V1_0),
        model=ModelInfo(name="AIML-TUDA/LlavaGuard-7B"),
        timings=timings,
    )


@pytest.fixture
def meter() -> WorkerMetrics:
    return WorkerMetrics(CollectorRegistry(), model="llavaguard-7b", gpu="3")


def test_finished_jobs_are_counted_by_outcome_and_code_with_a_histogram_per_stage(meter: WorkerMetrics) -> None:
    meter.finished(
        completed(Timings(fetch_ms=12, prepare_ms=3, infer_ms=250, total_ms=270)), publish_s=0.002, duplicate=False
    )  # type: ignore[arg-type]
    failed = failed_event(
        source="urn:test", job_id="j2", error=PermanentError("gone", code=ErrorCode.NOT_FOUND), attempts=1
    )
    meter.finished(failed, publish_s=0.001, duplicate=False)
    meter.finished(failed, publish_s=0.001, duplicate=True)
    samples = scrape(meter.registry)
    assert 1 == sample(samples, "guardq_jobs_total", model="llavaguard-7b", outcome="completed", code="none")
    assert 1 == sample(samples, "guardq_jobs_total", model="llavaguard-7b", outcome="failed", code="not_found")
    assert 1 == sample(samples, "guardq_jobs_total", model="llavaguard-7b", outcome="duplicate", code="not_found")
    assert 1 == sample(samples, "guardq_stage_duration_seconds_count", model="llavaguard-7b", stage="infer")
    assert 0.25 == pytest.approx(
        sample(samples, "guardq_stage_duration_seconds_sum", model="llavaguard-7b", stage="infer")
    )
    assert 3 == sample(samples, "guardq_stage_duration_seconds_count", model="llavaguard-7b", stage="publish")
    assert 1 == sample(
        samples, "guardq_stage_duration_seconds_bucket", model="llavaguard-7b", stage="fetch", le="0.025"
    )
    assert (1, 1, 1) == (meter.stats.completed, meter.stats.failed, meter.stats.duplicates)


def test_in_flight_is_per_gpu_and_returns_to_zero_even_when_the_job_raises(meter: WorkerMetrics) -> None:
    with meter.running():
        assert 1 == sample(scrape(meter.registry), "guardq_jobs_in_flight", model="llavaguard-7b", gpu="3")
    with pytest.raises(RuntimeError), meter.running():
        raise RuntimeError("boom")
    assert 0 == sample(scrape(meter.registry), "guardq_jobs_in_flight", model="llavaguard-7b", gpu="3")
    assert 0 == meter.stats.in_flight


def test_retries_requeues_and_cache_lookups_have_their_counters(meter: WorkerMetrics) -> None:
    meter.retry("inference_unavailable")
    meter.retry("inference_unavailable")
    meter.requeue("server_down")
    meter.cache_lookup("verdict", hit=True)
    meter.cache_lookup("verdict", hit=False)
    meter.cache_lookup("verdict", hit=True)
    samples = scrape(meter.registry)
    assert 2 == sample(samples, "guardq_job_retries_total", model="llavaguard-7b", code="inference_unavailable")
    assert 1 == sample(samples, "guardq_jobs_requeued_total", model="llavaguard-7b", reason="server_down")
    assert 2 == sample(samples, "guardq_cache_lookups_total", cache="verdict", result="hit")
    assert 1 == sample(samples, "guardq_cache_lookups_total", cache="verdict", result="miss")


def test_the_counter_hook_registers_a_counter_once_and_prefixes_its_name(meter: WorkerMetrics) -> None:
    first = meter.counter("webhook_deliveries", "Webhook deliveries", ["status"])
    assert first is meter.counter("guardq_webhook_deliveries", "Webhook deliveries", ["status"])
    first.labels("200").inc()
    assert 1 == sample(scrape(meter.registry), "guardq_webhook_deliveries_total", status="200")


def test_throughput_counts_jobs_finished_in_the_last_minute() -> None:
    stats = JobStats()
    for _ in range(5):
        stats.add("completed")
    stats.add("failed")
    snapshot = stats.snapshot()
    assert ("5", "1") == (snapshot["completed"], snapshot["failed"])
    assert 0 < float(snapshot["jobs_per_s"]) <= 6


@pytest.mark.integration
def test_queue_depth_is_read_from_redis_at_scrape_time(redis_client: redis_lib.Redis) -> None:
    queues = ["guardq.test-depth", "guardq.test-depth.bulk"]
    redis_client.delete(*queues)
    redis_client.rpush(queues[1], "a", "b", "c")
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(redis_client, queues))
    samples = scrape(registry)
    redis_client.delete(*queues)
    assert 0 == sample(samples, "guardq_queue_depth", queue=queues[0])
    assert 3 == sample(samples, "guardq_queue_depth", queue=queues[1])


class RecordingSwitch:
    """Stands in for Celery remote control; ``confirm`` says whether the node acknowledged."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.confirm = True

    def pause(self) -> bool:
        self.calls.append("pause")
        return self.confirm

    def resume(self) -> bool:
        self.calls.append("resume")
        return self.confirm


def probes(*results: bool) -> Callable[[], bool]:
    answers = iter(results)
    return lambda: next(answers)


def test_the_watch_pauses_after_two_failed_probes_retries_an_unconfirmed_pause_and_resumes_on_success() -> None:
    switch = RecordingSwitch()
    watch = ServerWatch(probes(False, False, False, True), switch, interval_s=1)  # type: ignore[arg-type]
    watch.check()
    assert ([], True) == (switch.calls, watch.consuming)
    switch.confirm = False
    watch.check()
    assert (["pause"], True, False) == (switch.calls, watch.consuming, watch.up)
    switch.confirm = True
    watch.check()
    assert (["pause", "pause"], False) == (switch.calls, watch.consuming)
    watch.check()
    assert (["pause", "pause", "resume"], True, True) == (switch.calls, watch.consuming, watch.up)
