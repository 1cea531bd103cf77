"""Resolve the policy a job runs under: inline, a stored ``name[@version]``, or the default."""

from __future__ import annotations

import redis
from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.job import ModerationJob
from schemas.keys import policy_key
from schemas.policy import DEFAULT_POLICY, Policy


class PolicyResolver:
    """Reads stored policies from Redis; immutable versions make them safe to cache per process."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client
        self._cache: dict[tuple[str, str], Policy] = {}

    def resolve(self, job: ModerationJob) -> Policy:
        if job.policy is not None:
            return job.policy
        if job.policy_ref in (None, "", "default"):
            return DEFAULT_POLICY
        assert job.policy_ref is not None
        name, _, version = job.policy_ref.partition("@")
        if version:
            cached = self._cache.get((name, version))
            if cached is not None:
                return cached
        key = policy_key(name)
        if not version:
            latest = self._redis.hget(key, "latest")
            version = latest.decode() if isinstance(latest, bytes) else (latest or "")
        raw = self._redis.hget(key, version) if version else None
        if raw is None:
            raise PermanentError(f"policy {job.policy_ref!r} is not stored", code=ErrorCode.POLICY_UNKNOWN)
        try:
            policy = Policy.model_validate_json(raw)
        except ValidationError as exc:
            raise PermanentError(
                f"stored policy {job.policy_ref!r} is invalid: {exc}", code=ErrorCode.POLICY_UNKNOWN
            ) from None
        self._cache[(name, version)] = policy
        return policy
