"""The API's long-lived clients (one set per process) and the request dependencies built on them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Header, Request
from pydantic import ValidationError

from producers.api.auth import ApiKeyStore, Principal
from producers.api.errors import ApiError
from producers.api.idempotency import IdempotencyStore
from producers.api.ratelimit import RateLimiter
from producers.api.sns import SnsConfirmer
from producers.broker import JobQueue
from producers.uploads import UploadStore
from schemas.errors import GuardqError
from schemas.job import ImageRef, ModerationJob
from schemas.keys import policy_key
from schemas.models import get_model
from schemas.policy import Policy
from schemas.settings import Settings


@dataclass
class Services:
    settings: Settings
    queue: JobQueue
    uploads: UploadStore
    keys: ApiKeyStore
    limiter: RateLimiter
    idempotency: IdempotencyStore
    sns: SnsConfirmer

    @classmethod
    def build(cls, settings: Settings, queue: JobQueue | None = None) -> Services:
        queue = queue or JobQueue(settings)
        _ = queue.redis, queue.celery  # create the lazy clients now, not racing in request threads
        return cls(
            settings=settings,
            queue=queue,
            uploads=UploadStore(settings),
            keys=ApiKeyStore(queue.redis),
            limiter=RateLimiter(queue.redis, settings.api_rate_limit, settings.api_rate_window_s),
            idempotency=IdempotencyStore(queue.redis, settings.api_idempotency_ttl_s),
            sns=SnsConfirmer(settings),
        )

    def close(self) -> None:
        self.sns.close()
        self.queue.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def principal(
    svc: ServicesDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> Principal:
    """Authenticate (401/403), then count the request against the tenant's rate limit (429)."""
    who = svc.keys.authenticate(authorization)
    svc.limiter.hit(who.tenant)
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]


def resolve_policy(svc: Services, value: str | Policy | None) -> tuple[Policy | None, str | None]:
    """An inline policy, or a stored ``name[@version]`` that must exist (else every job would fail later)."""
    if isinstance(value, Policy):
        return (value if "name" in value.model_fields_set else value.model_copy(update={"name": "custom"})), None
    if value is None:
        return None, None
    if value in ("", "default"):
        return None, None
    name, _, version = value.partition("@")
    if not svc.queue.redis.hexists(policy_key(name), version or "latest"):
        raise ApiError(422, "policy_unknown", f"policy {value!r} is not stored", field="policy")
    return None, value


def resolve_model(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return get_model(name).name
    except GuardqError as exc:
        raise ApiError(422, "model_unknown", str(exc), field="model") from None


def check_callback_url(url: str | None) -> str | None:
    """Only https callbacks to a named or public host; the sender re-checks every address when it delivers."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise ApiError(
            422,
            "invalid_callback_url",
            "callback_url must be an https:// URL without credentials",
            field="callback_url",
        )
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url
    if not ip.is_global:
        raise ApiError(
            422, "invalid_callback_url", "callback_url may not point at a non-public address", field="callback_url"
        )
    return url


def image_source(who: Principal, source: str) -> ImageRef:
    """A client-supplied source: ``s3://`` (bucket allowlist applies) or ``https://`` only."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme not in {"s3", "https"}:
        raise ApiError(422, "invalid_source", "source must be an s3://bucket/key or https:// URL", field="source")
    try:
        ref = ImageRef.parse(source)
    except ValidationError as exc:
        raise ApiError(422, "invalid_source", str(exc.errors()[0]["msg"]), field="source") from None
    if scheme == "s3":
        who.require_bucket(ref.bucket)
    return ref


def build_job(**fields: Any) -> ModerationJob:
    """A job from already-checked parts; a remaining rule violation (e.g. metadata too large) is a 422."""
    try:
        return ModerationJob(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = f"{where}: {err['msg']}" if where else err["msg"]
        raise ApiError(422, "invalid_request", message, field=where or None) from None
