"""The moderation pipeline for one job: fetch → hash → verdict cache, or decode/downscale + infer → verdict event.

Animated images and videos take the multi-frame path instead (worker/multiframe.py): sample the frames,
moderate each distinct one (each cached on its own), aggregate into one verdict plus ``data.frames``.

Stage timings and what is known so far live in :class:`Progress`, so a failure at any stage still produces a
failed event with every fact gathered up to that point.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.events import CloudEvent, ImageFacts, ModelInfo, Timings
from schemas.job import FORBIDDEN_SCHEME_ERROR, ModerationJob
from schemas.models import ModelSpec, get_model
from schemas.policy import Policy, PolicyInfo
from schemas.settings import Settings
from schemas.verdict import Verdict
from worker.cache import CachedOutcome, CacheKey, VerdictCache
from worker.decodebudget import DecodeBudget
from worker.eventbuild import completed_event, image_facts
from worker.image import prepare_image
from worker.inference.base import InferenceBackend, InferenceRequest
from worker.media import Media, MediaKind, sniff
from worker.multiframe import FrameModerator, FrameRequest
from worker.policies import PolicyResolver
from worker.sources import ImageSource


@dataclass
class Progress:
    """Facts gathered by one attempt, kept for the failed event if a later stage fails."""

    started: float = field(default_factory=time.perf_counter)
    job: ModerationJob | None = None
    image: ImageFacts | None = None
    policy: PolicyInfo | None = None
    model: ModelInfo | None = None
    timings: Timings = field(default_factory=Timings)
    inferred: tuple[CacheKey, CachedOutcome] | None = None  # what this attempt put in the verdict cache

    def lap(self, since: float) -> tuple[float, float]:
        now = time.perf_counter()
        return now, round((now - since) * 1000, 3)


def parse_job(message: Any) -> ModerationJob:
    """Validate a task argument; a malformed message is a permanent ``invalid_job`` failure."""
    if not isinstance(message, dict):
        raise PermanentError(f"job message is {type(message).__name__}, not an object", code=ErrorCode.INVALID_JOB)
    try:
        return ModerationJob.model_validate(message)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg']}" for e in exc.errors()[:5])
        forbidden = any(e["type"] == FORBIDDEN_SCHEME_ERROR for e in exc.errors())
        code = ErrorCode.FORBIDDEN_SOURCE if forbidden else ErrorCode.INVALID_JOB
        raise PermanentError(f"invalid job: {problems}", code=code) from None


class Moderator:
    """Runs jobs for one served model; shared by all worker threads of a process."""

    def __init__(
        self,
        settings: Settings,
        model: ModelSpec,
        source: ImageSource,
        backend: InferenceBackend,
        policies: PolicyResolver,
        cache: VerdictCache,
        decode_budget: DecodeBudget | None = None,
    ) -> None:
        self._settings = settings
        self._decode_budget = decode_budget
        self._model = model
        self._source = source
        self._backend = backend
        self._policies = policies
        self._cache = cache
        # Every model request of this process (still images and frames) holds one permit while in flight.
        self._inflight = threading.BoundedSemaphore(settings.max_in_flight())
        self._frames = FrameModerator(settings, model, backend, cache, self._inflight)

    def close(self) -> None:
        self._frames.close()

    def published(self, progress: Progress, stream_id: str) -> None:
        """The attempt's event is on the stream as ``stream_id``: its cache entry may now point there."""
        if progress.inferred is not None:
            self._cache.compact(*progress.inferred, stream_id)

    def run(self, job: ModerationJob, *, attempt: int, progress: Progress) -> CloudEvent:
        progress.job = job
        progress.model = self._backend.describe()
        wanted = get_model(job.model) if job.model else self._model
        if wanted.name != self._model.name:
            raise PermanentError(
                f"job asks for {wanted.name} but this worker serves {self._model.name}",
                code=ErrorCode.MODEL_UNAVAILABLE,
            )
        policy = self._policies.resolve(job)
        policy_text = policy.text(self._model.prompt_version)
        progress.policy = PolicyInfo.of(policy, self._model.prompt_version)
        if job.created_at is not None:
            progress.timings.queued_ms = round(max(0.0, time.time() - job.created_at.timestamp()) * 1000, 3)

        mark = time.perf_counter()
        data = self._source.fetch(job.image)
        mark, progress.timings.fetch_ms = progress.lap(mark)
        uri = str(job.image)
        sha256 = hashlib.sha256(data).hexdigest()
        progress.image = ImageFacts(uri=uri, sha256=sha256, bytes=len(data))

        mode = policy.rationale_mode
        want_score = policy.unsafe_threshold is not None or self._settings.scores
        key = CacheKey(
            self._model.slug,
            progress.policy.sha256,
            sha256,
            mode != "never",
            want_score,
            progress.model.simulated,
            flagged_at=policy.unsafe_threshold if mode == "flagged" else None,
            flagged_only=mode == "flagged",
            image_side=self._model.image_side(policy.image_detail) if policy.image_detail != "native" else None,
        )
        media = sniff(data)
        if media.kind is not MediaKind.STILL:
            frames = FrameRequest(
                policy_text=policy_text,
                policy_sha256=progress.policy.sha256,
                rid=f"{job.job_id}.{attempt}",
                with_rationale=mode != "never",
                want_score=want_score,
                simulated=progress.model.simulated,
                uri=uri,
                flagged_only=mode == "flagged",
                unsafe_threshold=policy.unsafe_threshold,
            )
            return self._run_frames(job, progress, data, media, frames, policy)

        def decode_and_infer() -> CachedOutcome:
            started = time.perf_counter()
            prepared = prepare_image(
                data,
                max_side=self._model.image_side(policy.image_detail),
                max_pixels=self._settings.max_image_pixels,
                jpeg_quality=self._settings.jpeg_quality,
                sha256=sha256,
                budget=self._decode_budget,
            )
            progress.image = image_facts(uri, prepared)
            progress.timings.prepare_ms = round((time.perf_counter() - started) * 1000, 3)
            request = InferenceRequest(
                image=prepared,
                policy_text=policy_text,
                rid=f"{job.job_id}.{attempt}",
                with_rationale=mode != "never",
                want_score=want_score,
                flagged_only=mode == "flagged",
                unsafe_threshold=policy.unsafe_threshold,
            )
            with self._inflight:
                return CachedOutcome(verdict=self._backend.infer(request).verdict, image=progress.image)

        # A hit (same bytes, policy text, model) skips decoding and the model call alike.
        outcome, cached = self._cache.verdict(key, decode_and_infer, job_id=job.job_id)
        if cached:
            progress.image = outcome.image.model_copy(update={"uri": uri})
        elif self._cache.enabled:
            progress.inferred = (key, outcome)
        verdict = outcome.verdict
        mark, progress.timings.infer_ms = progress.lap(mark)
        if progress.timings.prepare_ms is not None:
            progress.timings.infer_ms = round(max(0.0, progress.timings.infer_ms - progress.timings.prepare_ms), 3)
        needs_review = (
            policy.unsafe_threshold is not None
            and verdict.rating == "Safe"
            and verdict.unsafe_score is not None
            and verdict.unsafe_score >= policy.unsafe_threshold
        )
        _, progress.timings.total_ms = progress.lap(progress.started)
        return completed_event(
            source=self._settings.event_source,
            job=job,
            image=progress.image,
            verdict=verdict,
            policy=progress.policy,
            model=progress.model,
            timings=progress.timings,
            needs_review=needs_review,
            verdict_only=mode == "never",
            rationale_mode=mode,
            cached=cached,
        )

    def _run_frames(
        self,
        job: ModerationJob,
        progress: Progress,
        data: bytes,
        media: Media,
        request: FrameRequest,
        policy: Policy,
    ) -> CloudEvent:
        """An animated image or a video: one verdict over its sampled frames, the frames listed in the event."""
        assert progress.image is not None and progress.policy is not None and progress.model is not None
        outcome = self._frames.run(
            data, media, request, sha256=progress.image.sha256 or "", first_only=policy.first_frame_only
        )
        progress.image = outcome.image
        progress.timings.prepare_ms = outcome.prepare_ms
        progress.timings.infer_ms = outcome.infer_ms
        _, progress.timings.total_ms = progress.lap(progress.started)
        return completed_event(
            source=self._settings.event_source,
            job=job,
            image=outcome.image,
            verdict=outcome.verdict,
            policy=progress.policy,
            model=progress.model,
            timings=progress.timings,
            needs_review=_needs_review(outcome.verdict, policy.unsafe_threshold),
            verdict_only=policy.rationale_mode == "never",
            rationale_mode=policy.rationale_mode,
            cached=outcome.cached,
            frames=outcome.summary,
        )


def _needs_review(verdict: Verdict, unsafe_threshold: float | None) -> bool:
    """A Safe verdict whose P(Unsafe) reaches the policy's threshold goes to human review."""
    return (
        unsafe_threshold is not None
        and verdict.rating == "Safe"
        and verdict.unsafe_score is not None
        and verdict.unsafe_score >= unsafe_threshold
    )
