"""Verdict cache: the same image bytes under the same policy text and model cost one inference, not many.

A completed verdict (with the facts of the image it was given) is stored under a 128-bit digest of (model, policy
sha256, image sha256, request variant) as a compact JSON array (:func:`encode_outcome`: rating and category as
codes, the rationale, the score and the image facts; about 40 bytes plus the rationale, where the full JSON took
~680) for ``GUARDQ_VERDICT_CACHE_TTL_S`` (0 turns the cache off). Verdicts are fields of day buckets
(``schemas.keys.verdict_cache_bucket``: one hash per UTC day and shard, expiring a TTL after its day ends), not keys
of their own: a key costs ~150 bytes of key-space and expiry tables before its value. A lookup asks the buckets of
the TTL's days in one round trip; an entry lives its TTL and at most a day more. ``GUARDQ_CACHE_REDIS_URL`` puts it on a Redis of
its own (``maxmemory-policy allkeys-lru``: under memory pressure old verdicts go, never queued jobs). Sharing the
broker's Redis (the default), an entry keeps its rationale only until the job that inferred it has published its
event; then it points at that event instead (:meth:`VerdictCache.compact`), so a hit lives as long as the stream keeps
the event. A job that finds it publishes that verdict marked
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
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis
import structlog
from pydantic import BaseModel

from schemas.events import STREAM_FIELD, ImageFacts
from schemas.keys import (
    VERDICT_CACHE_PREFIX,
    VERDICT_CACHE_SHARDS,
    VERDICT_STREAM,
    verdict_cache_bucket,
    verdict_cache_key,
)
from schemas.taxonomy import CATEGORY_NAMES, category_code
from schemas.verdict import Verdict
from worker.tokenlock import Releaser

log = structlog.get_logger("guardq.cache")

_TAKE_OVER = Path(__file__).with_name("cache_take_over.lua").read_text()
LIVENESS_CHECK_S = 1.0  # how often a waiter asks whether the lock's holder still lives
DAY = 86400


def _field(name: str) -> str:
    return name[len(VERDICT_CACHE_PREFIX) :]


def _shard(name: str) -> int:
    return zlib.crc32(name.encode()) % VERDICT_CACHE_SHARDS


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


_CATEGORY_BY_CODE = {category_code(name): name for name in CATEGORY_NAMES}


_SCORE_METHODS: dict[str | None, str | None] = {"logprobs": "l", "detempered": "d", "logits": "g", None: None}
_SCORE_METHOD_OF = {code: name for name, code in _SCORE_METHODS.items()}


def encode_outcome(outcome: CachedOutcome, *, stream_id: str | None = None) -> bytes:
    """``[rating, category code, P(Unsafe), width, height, bytes, format, rationale, score method, truncated]`` as
    JSON (the image's sha256 is part of the key); the last two are one letter / 0-1, and absent in older entries.
    With ``stream_id`` the rationale is left out and the row ends with the id of the verdict event that holds it."""
    v, image = outcome.verdict, outcome.image
    row = [v.rating[0], v.category_code, v.unsafe_score, image.width, image.height, image.bytes, image.format]
    rationale = None if stream_id else v.rationale
    tail = [stream_id] if stream_id else []
    return orjson.dumps([*row, rationale, _SCORE_METHODS[v.score_method], int(bool(v.rationale_truncated)), *tail])


def decode_outcome(raw: bytes, sha256: str | None = None) -> tuple[CachedOutcome, str | None]:
    """The entry's outcome, and the stream id of the event that holds its rationale (a compacted entry) or None."""
    row = orjson.loads(raw)
    rating, code, score, width, height, size, fmt, rationale = row[:8]
    method, truncated = (row[8], row[9]) if len(row) >= 10 else (None, 0)
    reference = row[10] if len(row) >= 11 and isinstance(row[10], str) else None
    outcome = CachedOutcome(
        verdict=Verdict(
            rating="Safe" if rating == "S" else "Unsafe",
            category=_CATEGORY_BY_CODE[code],
            rationale=rationale,
            unsafe_score=score,
            score_method=_SCORE_METHOD_OF.get(method) if score is not None else None,
            rationale_truncated=True if truncated else None,
        ),
        image=ImageFacts(uri="", sha256=sha256, width=width, height=height, bytes=size, format=fmt),
    )
    return outcome, reference


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

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        ttl_s: int,
        wait_s: float,
        lock_s: float,
        incarnation: Callable[[], str] = lambda: "",
        alive: Callable[[str], bool] = lambda incarnation: True,
        stream: redis.Redis[bytes] | None = None,
    ) -> None:
        self._redis = client
        self._stream = stream  # the verdict stream's Redis when it is this cache's too: rationales by reference
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._lock_ms = max(1000, int(lock_s * 1000))
        self._incarnation = incarnation
        self._alive = alive
        self._release = Releaser(client)
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
            hit = self._get(name, key.image_sha256)
            if hit is not None:
                return hit, True
            if self._redis.set(lock, me, nx=True, px=self._lock_ms):
                return self._infer_as_owner(name, me, infer, key.image_sha256)
            held = self._redis.get(lock)
            if held is not None:
                holder = LockHolder.parse(held)
                stale = bool(job_id) and holder.job_id == job_id
                if not stale and time.monotonic() >= next_liveness_check:
                    next_liveness_check = time.monotonic() + LIVENESS_CHECK_S
                    stale = bool(holder.incarnation) and not self._alive(holder.incarnation)
                if stale and self._take_over(keys=[lock], args=[held, me, self._lock_ms]):
                    log.info("cache_lock_taken_over", key=name, holder_job=holder.job_id, holder=holder.incarnation)
                    return self._infer_as_owner(name, me, infer, key.image_sha256)
            if time.monotonic() >= deadline:
                log.warning("cache_wait_expired", key=name, waited_s=self._wait_s)
                return infer(), False
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))  # the owner is inferring; poll, bounded
            pause = min(pause * 1.5, 0.25)

    def _infer_as_owner(
        self, name: str, token: str, infer: Callable[[], CachedOutcome], sha256: str
    ) -> tuple[CachedOutcome, bool]:
        try:
            hit = self._get(name, sha256)  # the previous owner may have finished between our GET and our SET NX
            if hit is not None:
                return hit, True
            outcome = infer()
            day = int(time.time() // DAY)
            bucket = verdict_cache_bucket(day, _shard(name))
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(bucket, _field(name), encode_outcome(outcome))
            pipe.expireat(bucket, (day + 1) * DAY + self._ttl_s)
            pipe.execute()
            return outcome, False
        finally:
            self._release(f"{name}:lock", token)

    def _get(self, name: str, sha256: str | None = None) -> CachedOutcome | None:
        today, shard, field = int(time.time() // DAY), _shard(name), _field(name)
        pipe = self._redis.pipeline(transaction=False)
        for day in range(today, today - self._ttl_s // DAY - 2, -1):
            pipe.hget(verdict_cache_bucket(day, shard), field)
        raw = next((found for found in pipe.execute() if found), None)
        if not raw:
            return None
        try:
            outcome, reference = decode_outcome(raw, sha256)
        except (ValueError, KeyError, TypeError):  # an entry of an older layout: infer again, overwrite it
            return None
        if reference is None:
            return outcome
        rationale = self._rationale_at(reference)
        if rationale is None:  # its event was trimmed from the stream: a miss (inferred and cached again)
            return None
        return outcome.model_copy(update={"verdict": outcome.verdict.model_copy(update={"rationale": rationale})})

    def _rationale_at(self, stream_id: str) -> str | None:
        if self._stream is None:  # a cache on a Redis of its own cannot reach the stream (it never compacts)
            return None
        entries = self._stream.xrange(VERDICT_STREAM, stream_id, stream_id)
        body = entries[0][1].get(STREAM_FIELD.encode()) if entries else None
        if body is None:
            return None
        verdict = (orjson.loads(body).get("data") or {}).get("verdict") or {}
        rationale = verdict.get("rationale")
        return rationale if isinstance(rationale, str) and rationale else None

    def compact(self, key: CacheKey, outcome: CachedOutcome, stream_id: str) -> None:
        """After the job that inferred ``outcome`` published it as ``stream_id``: when the cache shares the stream's
        Redis, its entry drops the rationale for a reference to that event (~140 bytes an entry instead of ~140
        plus the rationale; LlavaGuard writes 200-400 characters). A hit then reads the rationale from the stream,
        and once the stream has trimmed the event the entry is a miss. A cache on a Redis of its own (the shipped
        deployment) keeps whole entries for its full TTL."""
        if self._stream is None or not self.enabled or not outcome.verdict.rationale:
            return
        name = key.redis_key()
        today, shard, field = int(time.time() // DAY), _shard(name), _field(name)
        for day in (today, today - 1):  # the bucket the entry went to when it was inferred (midnight between)
            bucket = verdict_cache_bucket(day, shard)
            if self._redis.hexists(bucket, field):
                self._redis.hset(bucket, field, encode_outcome(outcome, stream_id=stream_id))
                return
