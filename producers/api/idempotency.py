"""``Idempotency-Key`` (IETF draft-ietf-httpapi-idempotency-key-header): a retried request gets the first answer.

Per tenant and key, Redis remembers a fingerprint of the request (method, path, canonical body) and, once the
first request finished, its response. Same key + same fingerprint → the stored response again (same job id;
header ``Idempotent-Replayed: true``); same key + another fingerprint → 422; same key while the first request
is still running → 409. Keys live ``GUARDQ_API_IDEMPOTENCY_TTL_S``. The job id of a keyed request is derived from
tenant and key, so even a crash between enqueue and storing the answer cannot create a second, different job.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from producers.api.errors import ApiError
from producers.rediskeys import idempotency_key

_NAMESPACE = uuid.UUID("8a2f6c0e-93d4-4b1f-a7e5-0c6d2b9f4e31")
_VALID = re.compile(r"^[\x21-\x7e]{1,255}$")
_PENDING_TTL_S = 60


def fingerprint(method: str, path: str, payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def keyed_job_id(tenant: str, key: str) -> str:
    return uuid.uuid5(_NAMESPACE, f"{tenant}\n{key}").hex


@dataclass
class Claim:
    """The outcome of claiming a key: either ``replay`` (a stored answer) or a fresh claim to complete."""

    redis_key: str
    fingerprint: str
    replay: dict[str, Any] | None = None


class IdempotencyStore:
    def __init__(self, client: redis.Redis[bytes], ttl_s: int) -> None:
        self._redis = client
        self._ttl = ttl_s

    def claim(self, tenant: str, key: str, print_: str) -> Claim:
        if not _VALID.match(key):
            raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters")
        rkey = idempotency_key(tenant, key)
        pending = json.dumps({"fingerprint": print_, "state": "pending"})
        if self._redis.set(rkey, pending, nx=True, ex=_PENDING_TTL_S):
            return Claim(rkey, print_)
        raw = self._redis.get(rkey)
        if raw is None:  # expired between SET NX and GET: claim again
            return self.claim(tenant, key, print_)
        stored = json.loads(raw)
        if stored.get("fingerprint") != print_:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request; use a new key",
            )
        if stored.get("state") != "done":
            raise ApiError(
                409,
                "idempotency_in_progress",
                "a request with this Idempotency-Key is in progress",
                headers={"Retry-After": "1"},
            )
        return Claim(rkey, print_, replay=stored["response"])

    def complete(self, claim: Claim, response: dict[str, Any]) -> None:
        record = {"fingerprint": claim.fingerprint, "state": "done", "response": response}
        self._redis.set(claim.redis_key, json.dumps(record), ex=self._ttl)

    def release(self, claim: Claim) -> None:
        """The request failed before enqueueing: forget the key so a retry can go through."""
        self._redis.delete(claim.redis_key)
