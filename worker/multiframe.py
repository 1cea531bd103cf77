"""One verdict for an animated image or a video: sample its frames, moderate each distinct one, aggregate.

Each chosen frame is its own model request (its JPEG under the job's policy text) and its own verdict-cache entry,
keyed on the frame's bytes: the same frame in another file, or in a redelivered job, costs no model call. The
frames of one job run concurrently on a small pool shared by every job of the process
(``GUARDQ_FRAME_CONCURRENCY``), and every model request of the process — still images and frames alike — passes
one semaphore of ``GUARDQ_WORKER_CONCURRENCY`` permits, so a worker never has more requests in flight than
that, however many frames its jobs have.

Aggregation (schemas/frames.py): Unsafe when any frame is Unsafe, with the verdict of the most confident Unsafe
frame; otherwise the verdict of the riskiest Safe frame; ``unsafe_score`` is the highest P(Unsafe) of any frame.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from schemas.events import ImageFacts
from schemas.frames import FrameResult, FrameSource, FramesSummary
from schemas.models import ModelSpec
from schemas.settings import Settings
from schemas.verdict import Verdict
from worker.animation import Animation, DecodedFrame
from worker.cache import CachedOutcome, CacheKey, VerdictCache
from worker.frames import Candidate, FrameLimits, FrameSampler, jpeg
from worker.image import PreparedImage
from worker.inference.base import InferenceBackend, InferenceRequest
from worker.media import Media, MediaKind
from worker.video import Video, plan_targets


@dataclass(frozen=True)
class FrameRequest:
    """What every frame of one job shares: the policy, the request variant, and ids for the server's log."""

    policy_text: str
    policy_sha256: str
    rid: str
    with_rationale: bool
    want_score: bool
    simulated: bool
    uri: str
    flagged_only: bool = False  # rationale: flagged (per frame: a flagged frame gets its rationale)
    unsafe_threshold: float | None = None


@dataclass(frozen=True)
class Sampled:
    """The frames chosen from one file, and what the file is."""

    source: FrameSource
    format: str
    width: int
    height: int
    total: int | None
    duration_s: float | None
    chosen: list[Candidate]
    sampler: FrameSampler


@dataclass(frozen=True)
class ModeratedFrame:
    candidate: Candidate
    verdict: Verdict
    cached: bool


@dataclass(frozen=True)
class FramesOutcome:
    verdict: Verdict
    image: ImageFacts
    summary: FramesSummary
    cached: bool  # every frame's verdict came from the cache
    prepare_ms: float
    infer_ms: float


def sample_frames(data: bytes, media: Media, settings: Settings, model: ModelSpec, *, first_only: bool) -> Sampled:
    """Decode ``data`` frame by frame and keep the distinct frames the budget allows (worker/frames.py)."""
    limits = FrameLimits.of(settings)
    budget = 1 if first_only else settings.frame_budget
    sampler = FrameSampler(
        budget=budget,
        threshold=settings.frame_dedupe_threshold,
        encode=lambda image: jpeg(image, settings.jpeg_quality),
    )

    def feed(frames: Iterator[DecodedFrame]) -> None:
        for frame in frames:
            sampler.offer(frame.index, frame.time_s, frame.image)

    if media.kind is MediaKind.VIDEO:
        with Video(data, media.format, limits) as video:
            info = video.info
            targets = plan_targets(
                info.frames, video.keyframes, budget=budget, decode_limit=video.decode_limit, first_only=first_only
            )
            feed(video.frames(targets, max_side=model.image_max_side))
        return Sampled(
            "video", info.format, info.width, info.height, info.frames, info.duration_s, sampler.chosen(), sampler
        )
    animation = Animation(data, limits)
    feed(animation.frames(max_side=model.image_max_side, first_only=first_only))
    anim = animation.info
    total = animation.decoded if animation.decoded is not None else anim.frames
    return Sampled(
        "animation", anim.format, anim.width, anim.height, total, animation.elapsed_s, sampler.chosen(), sampler
    )


def aggregate(frames: list[ModeratedFrame]) -> tuple[Verdict, int]:
    """The job's verdict and the index of the frame it comes from (see the module docstring)."""

    def risk(f: ModeratedFrame) -> tuple[float, int]:
        score = f.verdict.unsafe_score
        return (score if score is not None else -1.0, -f.candidate.index)

    unsafe = [f for f in frames if f.verdict.unsafe]
    decisive = max(unsafe or frames, key=risk)
    scores = [f.verdict.unsafe_score for f in frames if f.verdict.unsafe_score is not None]
    verdict = decisive.verdict.model_copy(update={"unsafe_score": max(scores) if scores else None})
    return verdict, decisive.candidate.index


class FrameModerator:
    """Moderates multi-frame files; one per worker process, shared by its threads."""

    def __init__(
        self,
        settings: Settings,
        model: ModelSpec,
        backend: InferenceBackend,
        cache: VerdictCache,
        inflight: threading.Semaphore,
    ) -> None:
        self._settings = settings
        self._model = model
        self._backend = backend
        self._cache = cache
        self._inflight = inflight
        self._pool = ThreadPoolExecutor(max_workers=settings.frame_concurrency, thread_name_prefix="guardq-frame")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self, data: bytes, media: Media, request: FrameRequest, *, sha256: str, first_only: bool) -> FramesOutcome:
        started = time.perf_counter()
        sampled = sample_frames(data, media, self._settings, self._model, first_only=first_only)
        prepared = time.perf_counter()
        moderated = self._moderate(sampled.chosen, request)
        finished = time.perf_counter()
        verdict, decisive = aggregate(moderated)
        counts = sampled.sampler.counts()
        summary = FramesSummary(
            source=sampled.source,
            total=sampled.total,
            duration_s=sampled.duration_s,
            first_frame_only=first_only,
            budget=1 if first_only else self._settings.frame_budget,
            sampled=counts.sampled,
            moderated=counts.moderated,
            duplicates=counts.duplicates,
            over_budget=counts.over_budget,
            decisive=decisive,
            results=[
                FrameResult(
                    index=f.candidate.index,
                    time_s=f.candidate.time_s,
                    rating=f.verdict.rating,
                    category=f.verdict.category_code,
                    score=f.verdict.unsafe_score,
                    cached=f.cached,
                )
                for f in moderated
            ],
        )
        image = ImageFacts(
            uri=request.uri,
            sha256=sha256,
            width=sampled.width,
            height=sampled.height,
            bytes=len(data),
            format=sampled.format,
        )
        return FramesOutcome(
            verdict=verdict,
            image=image,
            summary=summary,
            cached=all(f.cached for f in moderated),
            prepare_ms=round((prepared - started) * 1000, 3),
            infer_ms=round((finished - prepared) * 1000, 3),
        )

    def _moderate(self, chosen: list[Candidate], request: FrameRequest) -> list[ModeratedFrame]:
        """Every chosen frame, concurrently; the first failure (in frame order) fails the job."""
        futures: list[Future[ModeratedFrame]] = [self._pool.submit(self._one, c, request) for c in chosen]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    def _one(self, candidate: Candidate, request: FrameRequest) -> ModeratedFrame:
        payload = candidate.payload
        assert payload is not None, "a chosen frame keeps its JPEG"
        digest = hashlib.sha256(payload).hexdigest()
        width, height = candidate.size
        frame = PreparedImage(digest, len(payload), "JPEG", width, height, "image/jpeg", payload)
        facts = ImageFacts(
            uri=f"{request.uri}#frame={candidate.index}",
            sha256=digest,
            width=width,
            height=height,
            bytes=len(payload),
            format="JPEG",
        )
        key = CacheKey(
            self._model.slug,
            request.policy_sha256,
            digest,
            request.with_rationale,
            request.want_score,
            request.simulated,
            flagged_only=request.flagged_only,
            flagged_at=request.unsafe_threshold if request.flagged_only else None,
        )

        def infer() -> CachedOutcome:
            inference = InferenceRequest(
                image=frame,
                policy_text=request.policy_text,
                rid=f"{request.rid}.f{candidate.index}",
                with_rationale=request.with_rationale,
                want_score=request.want_score,
                flagged_only=request.flagged_only,
                unsafe_threshold=request.unsafe_threshold,
            )
            with self._inflight:
                result = self._backend.infer(inference)
            return CachedOutcome(verdict=result.verdict, image=facts)

        outcome, cached = self._cache.verdict(key, infer)
        return ModeratedFrame(candidate, outcome.verdict, cached)
