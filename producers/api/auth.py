"""API keys per tenant, stored hashed in Redis, and the request authentication built on them.

A key reads ``gq_<key id>_<secret>``; Redis keeps only the SHA-256 of the whole key (the secret is 256 random
bits, so a fast hash is as safe as a slow one here), the tenant, the scopes and an optional bucket allowlist.
Requests send it as ``Authorization: Bearer <key>``, or as the password of HTTP Basic auth (what SNS HTTPS
subscriptions send when the endpoint URL carries ``user:password@``). Missing, malformed or unknown key → 401;
revoked key, missing scope or a bucket outside the allowlist → 403.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field

import redis

from producers.api.errors import ApiError
from producers.rediskeys import api_key_key, tenant_api_keys

# moderate: moderations, uploads, job status, the tenant's default policy · intake: S3 event notifications ·
# webhooks: the tenant's webhook subscriptions, test pings, replay · policies (operators): create and delete stored
# policies, which every tenant can name. A new key gets DEFAULT_SCOPES unless scopes are named.
SCOPES = ("moderate", "intake", "webhooks", "policies")
DEFAULT_SCOPES = ("moderate", "intake", "webhooks")
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOKEN = re.compile(r"^gq_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="guardq"'}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant of the key, its scopes and the buckets it may name (empty: any)."""

    tenant: str
    key_id: str
    scopes: frozenset[str]
    buckets: frozenset[str] = field(default_factory=frozenset)

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope")

    def require_bucket(self, bucket: str) -> None:
        if self.buckets and bucket not in self.buckets:
            raise ApiError(403, "bucket_not_allowed", f"this API key may not use bucket {bucket!r}")


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    scopes: tuple[str, ...]
    buckets: tuple[str, ...]
    created_at: float
    revoked_at: float | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _split(value: bytes | None) -> tuple[str, ...]:
    return tuple(s for s in (value or b"").decode().split(",") if s)


class ApiKeyStore:
    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client

    def create(
        self, tenant: str, scopes: tuple[str, ...] = DEFAULT_SCOPES, buckets: tuple[str, ...] = ()
    ) -> tuple[str, str]:
        """Create a key; return ``(key id, full key)``. The full key is shown once and never stored."""
        if not TENANT_PATTERN.match(tenant):
            raise ValueError(f"tenant {tenant!r} must match {TENANT_PATTERN.pattern}")
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})")
        key_id = secrets.token_hex(6)
        token = f"gq_{key_id}_{secrets.token_urlsafe(32)}"
        pipe = self._redis.pipeline()
        pipe.hset(
            api_key_key(key_id),
            mapping={
                "tenant": tenant,
                "sha256": _digest(token),
                "scopes": ",".join(scopes),
                "buckets": ",".join(buckets),
                "created_at": time.time(),
            },
        )
        pipe.sadd(tenant_api_keys(tenant), key_id)
        pipe.execute()
        return key_id, token

    def list(self, tenant: str) -> list[KeyInfo]:
        out = []
        for raw_id in sorted(self._redis.smembers(tenant_api_keys(tenant))):
            info = self.info(raw_id.decode())
            if info is not None:
                out.append(info)
        return out

    def info(self, key_id: str) -> KeyInfo | None:
        raw = self._redis.hgetall(api_key_key(key_id))
        if not raw:
            return None
        revoked = raw.get(b"revoked_at")
        return KeyInfo(
            key_id=key_id,
            tenant=raw[b"tenant"].decode(),
            scopes=_split(raw.get(b"scopes")),
            buckets=_split(raw.get(b"buckets")),
            created_at=float(raw.get(b"created_at", b"0")),
            revoked_at=float(revoked) if revoked else None,
        )

    def revoke(self, tenant: str, key_id: str) -> bool:
        """Mark a key revoked (kept, so its use answers 403 rather than 401); False if the tenant has no such key."""
        info = self.info(key_id)
        if info is None or info.tenant != tenant:
            return False
        self._redis.hsetnx(api_key_key(key_id), "revoked_at", time.time())
        return True

    def authenticate(self, authorization: str | None) -> Principal:
        token = _token_from_header(authorization)
        match = _TOKEN.match(token)
        if match is None:
            raise ApiError(401, "invalid_api_key", "the API key is malformed", headers=_CHALLENGE)
        raw = self._redis.hgetall(api_key_key(match.group(1)))
        stored = raw.get(b"sha256", b"").decode()
        if not stored or not hmac.compare_digest(stored, _digest(token)):
            raise ApiError(401, "invalid_api_key", "the API key is not valid", headers=_CHALLENGE)
        if raw.get(b"revoked_at"):
            raise ApiError(403, "api_key_revoked", "the API key was revoked")
        return Principal(
            tenant=raw[b"tenant"].decode(),
            key_id=match.group(1),
            scopes=frozenset(_split(raw.get(b"scopes"))),
            buckets=frozenset(_split(raw.get(b"buckets"))),
        )


def _token_from_header(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(401, "missing_api_key", "send an API key: Authorization: Bearer <key>", headers=_CHALLENGE)
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "invalid_api_key", "malformed Basic credentials", headers=_CHALLENGE) from None
        return decoded.partition(":")[2]
    raise ApiError(
        401,
        "missing_api_key",
        "use Authorization: Bearer <key> (or Basic with the key as password)",
        headers=_CHALLENGE,
    )
