"""Resolve the policy a job runs under: inline, a stored ``name[@version]``, the tenant's default, or built-in.

Order: the job's inline policy; else its ``policy_ref`` (``"default"`` means the built-in trained policy);
else the tenant's default from ``guardq:policy-defaults`` (set with ``guardq policy set-default``); else the
built-in default. Stored versions are immutable, so ``name@N`` is cached per process; ``name`` alone (latest)
and tenant defaults are read on every job, since they may change.
"""

from __future__ import annotations

import threading

import redis
import structlog
from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.job import ModerationJob
from schemas.keys import POLICY_DELETED_FIELD, POLICY_LATEST_FIELD, TENANT_POLICY_DEFAULTS, policy_key
from schemas.policy import BUILTIN_POLICY_NAME, DEFAULT_POLICY, SENSITIVE_WARNING, Policy, parse_policy_ref

log = structlog.get_logger("guardq.worker")


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


class PolicyResolver:
    """Reads stored policies and tenant defaults from Redis; immutable versions are cached per process."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client
        self._cache: dict[tuple[str, int], Policy] = {}
        self._warned: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()

    def resolve(self, job: ModerationJob) -> Policy:
        policy = self._resolve(job)
        if policy.uses_sensitive:
            self._warn_sensitive(policy)
        return policy

    def _resolve(self, job: ModerationJob) -> Policy:
        if job.policy is not None:
            return job.policy
        ref = job.policy_ref
        if not ref:
            ref = _text(self._redis.hget(TENANT_POLICY_DEFAULTS, job.tenant))
            if not ref:
                return DEFAULT_POLICY
        if ref == BUILTIN_POLICY_NAME:
            return DEFAULT_POLICY
        return self._stored(ref, for_tenant=None if job.policy_ref else job.tenant)

    def _stored(self, ref: str, *, for_tenant: str | None) -> Policy:
        whose = f" (default policy of tenant {for_tenant!r})" if for_tenant else ""
        try:
            name, version = parse_policy_ref(ref)
        except ValueError as exc:
            raise PermanentError(f"{exc}{whose}", code=ErrorCode.POLICY_UNKNOWN) from None
        if version is not None and (name, version) in self._cache:
            return self._cache[(name, version)]
        key = policy_key(name)
        if version is None:
            latest, deleted = self._redis.hmget(key, [POLICY_LATEST_FIELD, POLICY_DELETED_FIELD])
            if latest is None:
                raise PermanentError(f"policy {ref!r}{whose} is not stored", code=ErrorCode.POLICY_UNKNOWN)
            if deleted is not None:
                raise PermanentError(
                    f"policy {name!r}{whose} was deleted; only pinned versions ({name}@N) still resolve",
                    code=ErrorCode.POLICY_UNKNOWN,
                )
            version = int(latest)
        raw = self._redis.hget(key, str(version))
        if raw is None:
            raise PermanentError(f"policy {ref!r}{whose} is not stored", code=ErrorCode.POLICY_UNKNOWN)
        try:
            policy = Policy.model_validate_json(raw)
        except ValidationError as exc:
            raise PermanentError(f"stored policy {ref!r} is invalid: {exc}", code=ErrorCode.POLICY_UNKNOWN) from None
        self._cache[(name, version)] = policy
        return policy

    def _warn_sensitive(self, policy: Policy) -> None:
        """Log once per process and policy version: the checkpoints were never trained on 'sensitive'."""
        marker = (policy.name, policy.version, ",".join(f"{k}={v}" for k, v in sorted(policy.declarations.items())))
        with self._lock:
            if marker in self._warned:
                return
            self._warned.add(marker)
        log.warning("policy_uses_sensitive", policy=policy.name, version=policy.version, warning=SENSITIVE_WARNING)
