"""The API's long-lived clients (one set per process) and the request dependencies built on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from pydantic import ValidationError

from producers.api.auth import ApiKeyStore, Principal
from producers.api.errors import ApiError
from producers.api.idempotency import IdempotencyStore
from producers.api.ratelimit import RateLimiter
from producers.api.sns import SnsConfirmer
from producers.broker import JobQueue
from producers.policy_store import PolicyStore
from producers.uploads import UploadStore
from schemas.errors import GuardqError
from schemas.job import ImageRef, ModerationJob
from schemas.models import get_model
from schemas.policy import Policy
from schemas.settings import Settings
from worker.delivery import DeliveryStore, SubscriptionRegistry, check_target


@dataclass
class Services:
    settings: Settings
    queue: JobQueue
    uploads: UploadStore
    keys: ApiKeyStore
    limiter: RateLimiter
    idempotency: IdempotencyStore
    sns: SnsConfirmer
    policies: PolicyStore
    subscriptions: SubscriptionRegistry
    deliveries: DeliveryStore

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
            policies=PolicyStore(queue.redis),
            subscriptions=SubscriptionRegistry(queue.redis, settings),
            deliveries=DeliveryStore(queue.redis, settings),
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
    """An inline policy, or a stored ``name[@version]`` that must resolve now (else every job would fail later)."""
    if isinstance(value, Policy):
        return (value if "name" in value.model_fields_set else value.model_copy(update={"name": "custom"})), None
    if value is None or value in ("", "default"):
        return None, None
    try:
        svc.policies.get(value)
    except GuardqError as exc:
        raise ApiError.of(exc, field="policy") from None
    return None, value


def resolve_model(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return get_model(name).name
    except GuardqError as exc:
        raise ApiError(422, "model_unknown", str(exc), field="model") from None


def check_callback_url(svc: Services, url: str | None) -> str | None:
    """The webhook target check subscriptions pass (scheme, no credentials, every resolved address allowed).

    Run when the job is submitted, so a refused target is a 422 now rather than a dead letter later; the webhook
    worker checks the address it connects to again at send time (DNS can change).
    """
    if url is None:
        return None
    try:
        check_target(url, svc.settings)
    except GuardqError as exc:
        if exc.retryable:
            raise ApiError.of(exc) from None
        raise ApiError(
            422, "invalid_callback_url", f"callback_url refused: {exc.message}", field="callback_url"
        ) from None
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


def job_factory(
    svc: Services,
    who: Principal,
    image: ImageRef,
    *,
    policy: str | Policy | None,
    model: str | None,
    metadata: dict[str, Any],
    callback_url: str | None,
    idempotency_key: str | None,
) -> Callable[[str], ModerationJob]:
    """Check a request's job options (stored policy, model, callback target, the job's own rules) in that order and
    return ``job_id -> ModerationJob``. Everything is checked here, before any idempotency key is claimed, any file
    stored or anything sent; blocking (Redis, DNS): async routes call it in the thread pool."""
    inline, ref = resolve_policy(svc, policy)
    fields: dict[str, Any] = {
        "image": image,
        "model": resolve_model(model),
        "policy": inline,
        "policy_ref": ref,
        "tenant": who.tenant,
        "metadata": metadata,
        "idempotency_key": idempotency_key,
        "callback_url": check_callback_url(svc, callback_url),
    }

    def make(job_id: str) -> ModerationJob:
        return build_job(job_id=job_id, **fields)

    make("probe")
    return make


def build_job(**fields: Any) -> ModerationJob:
    """A job from already-checked parts; a remaining rule violation (e.g. metadata too large) is a 422."""
    try:
        return ModerationJob(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = f"{where}: {err['msg']}" if where else err["msg"]
        raise ApiError(422, "invalid_request", message, field=where or None) from None
