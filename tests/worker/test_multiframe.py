"""One verdict per multi-frame file: which frame decides, the event's frame list, concurrency and failures."""

from __future__ import annotations

import io
import threading

import pytest
import redis
from PIL import Image, ImageStat

from schemas.errors import ErrorCode, TransientError
from schemas.events import ModelInfo
from schemas.models import get_model
from schemas.settings import Settings
from schemas.verdict import Verdict
from tests import motion
from worker.cache import VerdictCache
from worker.frames import Candidate
from worker.inference.base import InferenceRequest, InferenceResult
from worker.media import sniff
from worker.multiframe import FrameModerator, FrameRequest, ModeratedFrame, aggregate

SAFE = Verdict(rating="Safe", category="NA: None applying", rationale="fine", unsafe_score=0.02)
O2 = "O2: Violence, Harm, or Cruelty"


def moderated(index: int, rating: str, category: str, score: float | None) -> ModeratedFrame:
    candidate = Candidate(index=index, time_s=index / 10, thumb=Image.new("RGB", (16, 16)))
    return ModeratedFrame(candidate, Verdict(rating=rating, category=category, unsafe_score=score), cached=False)  # type: ignore[arg-type]


def test_any_unsafe_frame_makes_the_job_unsafe_with_the_most_confident_unsafe_frame() -> None:
    frames = [
        moderated(0, "Safe", "NA: None applying", 0.1),
        moderated(3, "Unsafe", "O1: Hate, Humiliation, Harassment", 0.7),
        moderated(5, "Unsafe", O2, 0.95),
        moderated(9, "Safe", "NA: None applying", 0.2),
    ]
    verdict, decisive = aggregate(frames)
    assert ("Unsafe", O2, 0.95, 5) == (verdict.rating, verdict.category, verdict.unsafe_score, decisive)


def test_without_scores_the_earliest_unsafe_frame_decides() -> None:
    frames = [moderated(0, "Safe", "NA: None applying", None), moderated(4, "Unsafe", O2, None)]
    frames.append(moderated(8, "Unsafe", "O9: Disasters or Emergencies", None))
    verdict, decisive = aggregate(frames)
    assert (O2, None, 4) == (verdict.category, verdict.unsafe_score, decisive)


def test_a_safe_job_reports_its_riskiest_frame_and_the_highest_score() -> None:
    frames = [moderated(0, "Safe", "NA: None applying", 0.1), moderated(2, "Safe", "O9: Disasters or Emergencies", 0.4)]
    verdict, decisive = aggregate(frames)
    assert ("Safe", "O9: Disasters or Emergencies", 0.4, 2) == (
        verdict.rating,
        verdict.category,
        verdict.unsafe_score,
        decisive,
    )


class ColourBackend:
    """Rates a frame Unsafe (O2) when it is mostly red, like the SGLang test server; counts what runs at once."""

    def __init__(self, fail_on_unsafe: bool = False) -> None:
        self.lock = threading.Condition()
        self.running = self.peak = self.calls = 0
        self.fail_on_unsafe = fail_on_unsafe
        self.rids: list[str] = []

    def infer(self, request: InferenceRequest) -> InferenceResult:
        red = ImageStat.Stat(Image.open(io.BytesIO(request.image.payload)).convert("RGB")).mean[0] > 150
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
            self.rids.append(request.rid)
        try:
            if red and self.fail_on_unsafe:
                raise TransientError("server busy", code=ErrorCode.INFERENCE_UNAVAILABLE)
            verdict = Verdict(rating="Unsafe", category=O2, unsafe_score=0.97) if red else SAFE
            return InferenceResult(verdict=verdict, raw_text="{}")
        finally:
            with self.lock:
                self.running -= 1

    def describe(self) -> ModelInfo:
        return ModelInfo(name="test")

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        return None


class GatedBackend(ColourBackend):
    """Holds every call until ``width`` calls are inside at once (or all the remaining ones are)."""

    def __init__(self, width: int, total: int) -> None:
        super().__init__()
        self.width, self.left = width, total

    def infer(self, request: InferenceRequest) -> InferenceResult:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.lock.notify_all()
            assert self.lock.wait_for(lambda: self.running >= min(self.width, self.left), timeout=10)
            self.left -= 1
            self.running -= 1
            self.lock.notify_all()
        return InferenceResult(verdict=SAFE, raw_text="{}")


def frame_moderator(backend: ColourBackend, *, inflight: int = 32, **settings: object) -> FrameModerator:
    s = Settings(**settings)  # type: ignore[arg-type]
    no_cache = VerdictCache(redis.Redis(), ttl_s=0, wait_s=0, lock_s=1)  # ttl 0: never touches Redis
    return FrameModerator(s, get_model(s.model), backend, no_cache, threading.BoundedSemaphore(inflight))


REQUEST = FrameRequest("policy", "p" * 64, "job-1.1", True, True, False, "s3://b/k.gif")


@pytest.mark.parametrize("position", [1, 6, 11])
def test_the_unsafe_frame_decides_and_every_moderated_frame_is_listed(position: int) -> None:
    backend = ColourBackend()
    data = motion.animation(12, unsafe_at={position})
    with_frames = frame_moderator(backend)
    try:
        outcome = with_frames.run(data, sniff(data), REQUEST, sha256="f" * 64, first_only=False)
    finally:
        with_frames.close()
    summary = outcome.summary
    assert ("Unsafe", O2, position) == (outcome.verdict.rating, outcome.verdict.category, summary.decisive)
    assert [position] == [r.index for r in summary.unsafe_frames]
    assert summary.moderated == len(summary.results) == backend.calls <= summary.budget == 16
    assert (12, "animation", "GIF", 160, 120) == (
        summary.total,
        summary.source,
        outcome.image.format,
        outcome.image.width,
        outcome.image.height,
    )
    assert {f"job-1.1.f{r.index}" for r in summary.results} == set(backend.rids)
    assert 0.96 == summary.duration_s


def test_first_frame_only_makes_one_model_call_and_says_so() -> None:
    backend = ColourBackend()
    data = motion.clip(40, unsafe_at={20})
    frames = frame_moderator(backend)
    try:
        outcome = frames.run(data, sniff(data), REQUEST, sha256="f" * 64, first_only=True)
    finally:
        frames.close()
    assert ("Safe", 1, True, 1) == (
        outcome.verdict.rating,
        backend.calls,
        outcome.summary.first_frame_only,
        outcome.summary.budget,
    )


def test_frames_of_a_job_run_concurrently_but_never_past_the_process_wide_in_flight_bound() -> None:
    data = motion.animation(64)  # more than 16 distinct frames: the budget's 16 are moderated
    backend = GatedBackend(width=3, total=16)
    frames = frame_moderator(backend, inflight=3, frame_concurrency=8)
    try:
        outcome = frames.run(data, sniff(data), REQUEST, sha256="f" * 64, first_only=False)
    finally:
        frames.close()
    assert 16 == outcome.summary.moderated
    assert 3 == backend.peak  # concurrent, and never more than the bound


def test_a_failing_frame_fails_the_job_with_its_error() -> None:
    data = motion.animation(8, unsafe_at={5})
    frames = frame_moderator(ColourBackend(fail_on_unsafe=True))
    try:
        with pytest.raises(TransientError) as info:
            frames.run(data, sniff(data), REQUEST, sha256="f" * 64, first_only=False)
    finally:
        frames.close()
    assert ErrorCode.INFERENCE_UNAVAILABLE == info.value.code
