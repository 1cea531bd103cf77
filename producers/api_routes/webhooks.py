"""``/v1/webhooks`` and ``/v1/events/replay``: webhook subscriptions, test pings, delivery status and replay.

Not mounted anywhere by itself: the API app includes ``router`` and may override :func:`delivery_context` (for
its own Redis client and settings, or to scope subscriptions to the authenticated tenant).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Response, status
from pydantic import BaseModel, Field

from producers.webhooks.deliveries import DeliveryStore
from producers.webhooks.registry import SubscriptionRegistry
from producers.webhooks.replay import queue_test_delivery, replay_events
from schemas.errors import ErrorCode, GuardqError
from schemas.settings import Settings, load_settings
from schemas.webhooks import TenantName


@dataclass(frozen=True)
class DeliveryContext:
    redis: redis.Redis[bytes]
    settings: Settings


@lru_cache(maxsize=1)
def delivery_context() -> DeliveryContext:
    """One Redis pool and the settings, per process (override in the app to share its own)."""
    settings = load_settings()
    return DeliveryContext(redis.Redis.from_url(settings.redis_url, socket_timeout=30), settings)


Context = Annotated[DeliveryContext, Depends(delivery_context)]
router = APIRouter(tags=["webhooks"])


class WebhookCreate(BaseModel):
    url: str = Field(min_length=8, max_length=2048)
    tenant: TenantName = "default"
    event_types: list[str] = Field(default_factory=list, description="completed, failed or full type names")
    description: str | None = Field(default=None, max_length=200)


class ReplayRequest(BaseModel):
    subscription_id: str
    since: datetime
    until: datetime | None = None
    types: list[str] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1)


def _http_error(exc: GuardqError | ValueError) -> HTTPException:
    if isinstance(exc, ValueError):
        return HTTPException(422, {"code": "invalid_request", "message": str(exc)})
    code = status.HTTP_404_NOT_FOUND if exc.code is ErrorCode.NOT_FOUND else 422
    return HTTPException(code, {"code": exc.code.value, "message": exc.message})


@router.post("/v1/webhooks", status_code=status.HTTP_201_CREATED)
def create_webhook(body: WebhookCreate, ctx: Context) -> dict[str, Any]:
    """Register an endpoint; the answer carries its ``whsec_`` secret, shown only this once."""
    try:
        sub = SubscriptionRegistry(ctx.redis, ctx.settings).add(
            url=body.url, tenant=body.tenant, event_types=body.event_types, description=body.description
        )
    except (GuardqError, ValueError) as exc:
        raise _http_error(exc) from None
    return sub.model_dump(mode="json")


@router.get("/v1/webhooks")
def list_webhooks(ctx: Context, tenant: str | None = None) -> dict[str, Any]:
    return {"subscriptions": [s.public() for s in SubscriptionRegistry(ctx.redis, ctx.settings).all(tenant)]}


@router.get("/v1/webhooks/{subscription_id}")
def get_webhook(subscription_id: str, ctx: Context) -> dict[str, Any]:
    sub = SubscriptionRegistry(ctx.redis, ctx.settings).get(subscription_id)
    if sub is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, {"code": "not_found", "message": "no such subscription"})
    return sub.public()


@router.delete("/v1/webhooks/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(subscription_id: str, ctx: Context) -> Response:
    if not SubscriptionRegistry(ctx.redis, ctx.settings).remove(subscription_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, {"code": "not_found", "message": "no such subscription"})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/webhooks/{subscription_id}/enable")
def enable_webhook(subscription_id: str, ctx: Context) -> dict[str, Any]:
    try:
        return SubscriptionRegistry(ctx.redis, ctx.settings).set_enabled(subscription_id, True).public()
    except GuardqError as exc:
        raise _http_error(exc) from None


@router.post("/v1/webhooks/{subscription_id}/test", status_code=status.HTTP_202_ACCEPTED)
def test_webhook(subscription_id: str, ctx: Context) -> dict[str, str]:
    """Queue one signed ``guardq.webhook.test`` ping; poll ``/v1/webhooks/deliveries/{id}`` for the outcome."""
    try:
        return {"delivery_id": queue_test_delivery(ctx.redis, ctx.settings, subscription_id)}
    except GuardqError as exc:
        raise _http_error(exc) from None


@router.get("/v1/webhooks/deliveries/{delivery_id}")
def delivery_status(delivery_id: str, ctx: Context) -> dict[str, Any]:
    found = DeliveryStore(ctx.redis, ctx.settings).status(delivery_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, {"code": "not_found", "message": "no such delivery"})
    return {"delivery_id": delivery_id, **found}


@router.post("/v1/events/replay", status_code=status.HTTP_202_ACCEPTED)
def replay(body: ReplayRequest, ctx: Context) -> dict[str, Any]:
    """Re-send stored events to a subscription with their original ids (receivers dedupe on ``webhook-id``)."""
    try:
        result = replay_events(
            ctx.redis,
            ctx.settings,
            body.subscription_id,
            since=body.since,
            until=body.until,
            types=body.types,
            limit=body.limit,
        )
    except (GuardqError, ValueError) as exc:
        raise _http_error(exc) from None
    return dataclasses.asdict(result)
