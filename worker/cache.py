"""Verdict cache: the same image bytes under the same policy text and model cost one inference, not many.

A completed verdict (with the facts of the image it was given) is stored under (model, policy sha256, image
sha256, request variant) for
``GUARDQ_VERDICT_CACHE_TTL_S`` (0 turns the cache off). A job that finds it publishes that verdict marked
``data.cached = true`` without calling the model. Duplicates that arrive while the first is still being inferred
do not all hit the GPU: the first takes a short Redis lock (``SET NX PX``), the others poll for its verdict for
at most ``GUARDQ_VERDICT_CACHE_WAIT_S`` and then infer themselves (so a stuck owner delays, never blocks). The
lock expires on its own if its owner dies, and is released (compare-and-delete) if inference fails.
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
    flagged_only: bool = False  # rationale: flagged, at threshold flagged_at (decides which verdicts get one)
    flagged_at: float | None = None
    image_side: int | None = None  # the policy's image detail, as the side the model was sent

    def redis_key(self) -> str:
        rationale = f"f{self.flagged_at or ''}" if self.flagged_only else str(int(self.with_rationale))
        variant = f"r{rationale}s{int(self.want_score)}" + ("-sim" if self.simulated else "")
        if self.image_side is not None:
            variant += f"-px{self.image_side}"
        return verdict_cache_key(self.model_slug, self.policy_sha256, self.image_sha256, variant)


class VerdictCache:
    """One per worker process, shared by its threads."""

    def __init__(self, client: redis.Redis[bytes], *, ttl_s: int, wait_s: float, lock_s: float) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._lock_ms = max(1000, int(lock_s * 1000))
        self._release = client.register_script(_RELEASE)

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    def verdict(self, key: CacheKey, infer: Callable[[], CachedOutcome]) -> tuple[CachedOutcome, bool]:
        """The outcome for ``key`` and whether it came from the cache; calls ``infer`` only when it must.

        ``infer`` is the whole expensive path (decode, downscale, model call): a hit skips all of it.
        """
        if not self.enabled:
            return infer(), False
        name = key.redis_key()
        deadline = time.monotonic() + self._wait_s
        pause = 0.02
        while True:
            hit = self._get(name)
            if hit is not None:
                return hit, True
            token = uuid.uuid4().hex
            if self._redis.set(f"{name}:lock", token, nx=True, px=self._lock_ms):
                return self._infer_as_owner(name, token, infer)
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
