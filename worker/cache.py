"""Verdict cache: the same image bytes under the same policy text and model cost one inference, not many.

A completed verdict (with the facts of the image it was given) is stored under (model, policy sha256, image
sha256, request variant) for
``GUARDQ_VERDICT_CACHE_TTL_S`` (0 turns the cache off). A job that finds it publishes that verdict marked
``data.cached = true`` without calling the model. Duplicates that arrive while the first is still being inferred
do not all hit the GPU: the first takes a short Redis lock (``SET NX PX``), the others poll for its verdict for
at most ``GUARDQ_VERDICT_CACHE_WAIT_S`` (kept well below the visibility timeout) and then infer themselves (so a
stuck owner delays, never blocks). The lock is released (compare-and-delete) when inference fails.

The lock names its holder: ``<job id> <incarnation> <token>``. A job finding the lock held by *its own* job id
(a redelivery after its worker died, or a re-sent job) takes it over at once instead of waiting for itself; a
waiter finding the holder's worker dead (its lease gone, ``worker.liveness``) takes it over too. Takeover is one
compare-and-set, so two takers never both own it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog
from pydantic import BaseModel

from schemas.events import ImageFacts
from schemas.keys import verdict_cache_key
from schemas.verdict import Verdict

log = structlog.get_logger("guardq.cache")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return false
"""
LIVENESS_CHECK_S = 1.0  # how often a waiter asks whether the lock's holder still lives


@dataclass(frozen=True)
class LockHolder:
    """Who holds a cache lock: the job, the worker incarnation running it, and a token unique to the attempt."""

    job_id: str
    incarnation: str
    token: str

    def value(self) -> str:
        return f"{self.job_id} {self.incarnation} {self.token}"

    @classmethod
    def parse(cls, raw: bytes | str) -> LockHolder:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        job_id, _, rest = text.partition(" ")
        incarnation, _, token = rest.rpartition(" ")
        return cls(job_id, incarnation, token)


class CachedOutcome(BaseModel):
    """What a cache hit replays: the verdict and the facts of the image (identical bytes, so identical facts)."""

    verdict: Verdict
    image: ImageFacts


@dataclass(frozen=True)
class CacheKey:
    """What makes two requests interchangeable: the model, the exact policy text, the exact bytes, the variant."""

    model_slug: str
    policy_sha256: str
    image_sha256: str
    with_rationale: bool = True
    want_score: bool = False
    simulated: bool = False

    def redis_key(self) -> str:
        variant = f"r{int(self.with_rationale)}s{int(self.want_score)}" + ("-sim" if self.simulated else "")
        return verdict_cache_key(self.model_slug, self.policy_sha256, self.image_sha256, variant)


class VerdictCache:
    """One per worker process, shared by its threads."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        ttl_s: int,
        wait_s: float,
        lock_s: float,
        incarnation: Callable[[], str] = lambda: "",
        alive: Callable[[str], bool] = lambda incarnation: True,
    ) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._lock_ms = max(1000, int(lock_s * 1000))
        self._incarnation = incarnation
        self._alive = alive
        self._release = client.register_script(_RELEASE)
        self._take_over = client.register_script(_TAKE_OVER)

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    def verdict(
        self, key: CacheKey, infer: Callable[[], CachedOutcome], *, job_id: str = ""
    ) -> tuple[CachedOutcome, bool]:
        """The outcome for ``key`` and whether it came from the cache; calls ``infer`` only when it must.

        ``infer`` is the whole expensive path (decode, downscale, model call): a hit skips all of it. ``job_id``
        names the lock's holder, so a redelivery of the same job takes over the lock its dead attempt left.
        """
        if not self.enabled:
            return infer(), False
        name = key.redis_key()
        lock = f"{name}:lock"
        me = LockHolder(job_id, self._incarnation(), uuid.uuid4().hex).value()
        deadline = time.monotonic() + self._wait_s
        next_liveness_check = time.monotonic() + LIVENESS_CHECK_S
        pause = 0.02
        while True:
            hit = self._get(name)
            if hit is not None:
                return hit, True
            if self._redis.set(lock, me, nx=True, px=self._lock_ms):
                return self._infer_as_owner(name, me, infer)
            held = self._redis.get(lock)
            if held is not None:
                holder = LockHolder.parse(held)
                stale = bool(job_id) and holder.job_id == job_id
                if not stale and time.monotonic() >= next_liveness_check:
                    next_liveness_check = time.monotonic() + LIVENESS_CHECK_S
                    stale = bool(holder.incarnation) and not self._alive(holder.incarnation)
                if stale and self._take_over(keys=[lock], args=[held, me, self._lock_ms]):
                    log.info("cache_lock_taken_over", key=name, holder_job=holder.job_id, holder=holder.incarnation)
                    return self._infer_as_owner(name, me, infer)
            if time.monotonic() >= deadline:
                log.warning("cache_wait_expired", key=name, waited_s=self._wait_s)
                return infer(), False
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))  # the owner is inferring; poll, bounded
            pause = min(pause * 1.5, 0.25)

    def _infer_as_owner(self, name: str, token: str, infer: Callable[[], CachedOutcome]) -> tuple[CachedOutcome, bool]:
        try:
            hit = self._get(name)  # the previous owner may have finished between our GET and our SET NX
            if hit is not None:
                return hit, True
            outcome = infer()
            self._redis.set(name, outcome.model_dump_json(), ex=self._ttl_s)
            return outcome, False
        finally:
            self._release(keys=[f"{name}:lock"], args=[token])

    def _get(self, name: str) -> CachedOutcome | None:
        raw = self._redis.get(name)
        return CachedOutcome.model_validate_json(raw) if raw else None
