"""``/v1/webhooks`` and ``POST /v1/events/replay``: the caller's webhook subscriptions, test pings, delivery status
and replay.

Everything here needs the ``webhooks`` scope and acts for the API key's tenant: a subscription is created for that
tenant, listings show only its subscriptions, and a subscription or delivery of another tenant is reported exactly
like one that does not exist (404). Target URLs pass the webhook SSRF check at registration (422
``forbidden_target``) and again at send time.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from producers.api.auth import Principal
from producers.api.errors import ApiError
from producers.api.services import PrincipalDep, Services, ServicesDep
from schemas.errors import ErrorCode, GuardqError
from schemas.records import DeliveryField
from schemas.webhooks import Delivery, Subscription, TenantName, normalize_event_types
from worker.delivery import queue_test_delivery, replay_events

router = APIRouter(tags=["webhooks"])


class WebhookCreate(BaseModel):
    """Body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048)
    tenant: TenantName | None = Field(default=None, description="Optional; must be the API key's own tenant.")
    event_types: list[str] = Field(default_factory=list, description="completed, failed or full type names")
    description: str | None = Field(default=None, max_length=200)

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return normalize_event_types(value)


class ReplayRequest(BaseModel):
    """Body of ``POST /v1/events/replay``."""

    model_config = ConfigDict(extra="forbid")

    subscription_id: str
    since: datetime
    until: datetime | None = None
    types: list[str] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1)

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return normalize_event_types(value)


def _refused(exc: GuardqError, field: str | None = None) -> ApiError:
    return ApiError.of(exc, 404 if exc.code is ErrorCode.NOT_FOUND else 422, field=field)


def _owned(who: Principal, svc: Services, subscription_id: str) -> Subscription:
    """The caller's subscription, or 404 (also for another tenant's: never confirm that an id exists)."""
    who.require("webhooks")
    sub = svc.subscriptions.get(subscription_id)
    if sub is None or sub.tenant != who.tenant:
        raise ApiError(404, "not_found", f"no webhook subscription {subscription_id!r}")
    return sub


@router.post("/v1/webhooks", status_code=status.HTTP_201_CREATED, summary="Register a webhook endpoint")
def create_webhook(body: WebhookCreate, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    """Register an endpoint for the caller's events; the answer carries its ``whsec_`` secret, shown only once."""
    who.require("webhooks")
    if body.tenant not in (None, who.tenant):
        raise ApiError(403, "forbidden", "an API key manages only its own tenant's subscriptions", field="tenant")
    try:
        sub = svc.subscriptions.add(
            url=body.url, tenant=who.tenant, event_types=body.event_types, description=body.description
        )
    except GuardqError as exc:
        raise _refused(exc, "url") from None
    return sub.model_dump(mode="json")


@router.get("/v1/webhooks", summary="The caller's webhook subscriptions")
def list_webhooks(who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    """The tenant's subscriptions, oldest first, without their secrets."""
    who.require("webhooks")
    return {"subscriptions": [s.public() for s in svc.subscriptions.all(who.tenant)]}


@router.get("/v1/webhooks/{subscription_id}", summary="One subscription")
def get_webhook(subscription_id: str, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    return _owned(who, svc, subscription_id).public()


@router.delete(
    "/v1/webhooks/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a subscription"
)
def delete_webhook(subscription_id: str, who: PrincipalDep, svc: ServicesDep) -> Response:
    """Remove it; its pending deliveries are dead-lettered when they come due."""
    _owned(who, svc, subscription_id)
    if not svc.subscriptions.remove(subscription_id):
        raise ApiError(404, "not_found", f"no webhook subscription {subscription_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/webhooks/{subscription_id}/enable", summary="Enable a subscription again (after a 410)")
def enable_webhook(subscription_id: str, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    _owned(who, svc, subscription_id)
    try:
        return svc.subscriptions.set_enabled(subscription_id, True).public()
    except GuardqError as exc:
        raise _refused(exc) from None


@router.post(
    "/v1/webhooks/{subscription_id}/test", status_code=status.HTTP_202_ACCEPTED, summary="Queue a signed test ping"
)
def test_webhook(subscription_id: str, who: PrincipalDep, svc: ServicesDep) -> dict[str, str]:
    """Queue one signed ``guardq.webhook.test`` ping; poll ``/v1/webhooks/deliveries/{id}`` for the outcome."""
    _owned(who, svc, subscription_id)
    try:
        return {"delivery_id": queue_test_delivery(svc.queue.redis, svc.settings, subscription_id)}
    except GuardqError as exc:
        raise _refused(exc) from None


@router.get("/v1/webhooks/deliveries/{delivery_id}", summary="A delivery's state")
def delivery_status(delivery_id: str, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    """State, attempts and last answer of one delivery (test ping, replay or event) of the caller's tenant."""
    who.require("webhooks")
    found = svc.deliveries.status(delivery_id)
    if found is None or Delivery.model_validate_json(found[DeliveryField.RECORD]).tenant != who.tenant:
        raise ApiError(404, "not_found", f"no delivery {delivery_id!r}")
    return {"delivery_id": delivery_id, **found}


@router.post("/v1/events/replay", status_code=status.HTTP_202_ACCEPTED, summary="Re-send stored events")
def replay(body: ReplayRequest, who: PrincipalDep, svc: ServicesDep) -> dict[str, Any]:
    """Re-send the tenant's stored events to one of its subscriptions with their original ids (receivers dedupe
    on ``webhook-id``)."""
    _owned(who, svc, body.subscription_id)
    try:
        result = replay_events(
            svc.queue.redis,
            svc.settings,
            body.subscription_id,
            since=body.since,
            until=body.until,
            types=body.types,
            limit=body.limit,
        )
    except GuardqError as exc:
        raise _refused(exc) from None
    return dataclasses.asdict(result)
