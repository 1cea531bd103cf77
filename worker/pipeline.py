"""The moderation pipeline for one job: fetch → hash → verdict cache, or decode/downscale + infer → verdict event.

Stage timings and what is known so far live in :class:`Progress`, so a failure at any stage still produces a
failed event with every fact gathered up to that point.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.events import CloudEvent, ImageFacts, ModelInfo, Timings
from schemas.job import FORBIDDEN_SCHEME_ERROR, ModerationJob
from schemas.models import ModelSpec, get_model
from schemas.policy import PolicyInfo
from schemas.settings import Settings
from worker.cache import CachedOutcome, CacheKey, VerdictCache
from worker.decodebudget import DecodeBudget
from worker.eventbuild import completed_event, image_facts
from worker.image import prepare_image
from worker.inference.base import InferenceBackend, InferenceRequest
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

        want_score = policy.unsafe_threshold is not None or self._settings.scores
        key = CacheKey(
            self._model.slug,
            progress.policy.sha256,
            sha256,
            not policy.verdict_only,
            want_score,
            progress.model.simulated,
        )

        def decode_and_infer() -> CachedOutcome:
            started = time.perf_counter()
            prepared = prepare_image(
                data,
                max_side=self._model.image_max_side,
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
                with_rationale=not policy.verdict_only,
                want_score=want_score,
            )
            return CachedOutcome(verdict=self._backend.infer(request).verdict, image=progress.image)

        # A hit (same bytes, policy text, model) skips decoding and the model call alike.
        outcome, cached = self._cache.verdict(key, decode_and_infer, job_id=job.job_id)
        if cached:
            progress.image = outcome.image.model_copy(update={"uri": uri})
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
            verdict_only=policy.verdict_only,
            cached=cached,
        )
