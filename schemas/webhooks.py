"""Webhook subscriptions and deliveries as stored in Redis, shared by ``worker/delivery/webhooks`` (register,
dispatch, replay, send, retry, dead-letter) and the HTTP API (a delivery's tenant, event type filters).

Delivery follows the Standard Webhooks spec: the body is the CloudEvent JSON exactly as it sits on the stream,
``webhook-id`` is the event id (stable across retries and replays, the receiver's dedupe key) and the signature is
``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed by the subscription's ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.events import EventType

SECRET_PREFIX = "whsec_"  # noqa: S105 - the spec's prefix, not a secret
TEST_EVENT_TYPE = "guardq.webhook.test"
_DELIVERY_NAMESPACE = uuid.UUID("0d6c1f8e-3b52-4c0e-a7f4-1e2d3c4b5a69")
_TYPE_ALIASES = {"completed": EventType.COMPLETED.value, "failed": EventType.FAILED.value}
TenantName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def new_secret() -> str:
    """A fresh ``whsec_`` secret: 32 random bytes, base64 (the spec asks for 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def normalize_event_types(types: list[str]) -> list[str]:
    """Full event type names for a filter given as full names or ``completed``/``failed``; raises on unknown ones."""
    known = {t.value for t in EventType}
    out: list[str] = []
    for item in types:
        full = _TYPE_ALIASES.get(item, item)
        if full not in known:
            raise ValueError(f"unknown event type {item!r}; use completed, failed or one of {sorted(known)}")
        if full not in out:
            out.append(full)
    return out


class Subscription(BaseModel):
    """A tenant's endpoint: which of its events go there (all when ``event_types`` is empty), signed how."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: "sub_" + secrets.token_hex(8), pattern=r"^[A-Za-z0-9_-]{1,64}$")
    tenant: TenantName = "default"
    url: str = Field(min_length=8, max_length=2048)
    event_types: list[str] = Field(default_factory=list)
    secret: str = Field(default_factory=new_secret)
    description: str | None = Field(default=None, max_length=200)
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return normalize_event_types(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if not value.startswith(SECRET_PREFIX) or not 24 <= len(secret_bytes(value)) <= 64:
            raise ValueError("must be whsec_ followed by base64 of 24 to 64 bytes")
        return value

    def wants(self, tenant: str, event_type: str) -> bool:
        """True when an event of this tenant and type should be delivered here."""
        return self.enabled and tenant == self.tenant and (not self.event_types or event_type in self.event_types)

    def public(self) -> dict[str, object]:
        """The subscription as shown in listings: everything but the secret."""
        return self.model_dump(mode="json", exclude={"secret"})


class DeliveryTarget(BaseModel):
    """Where a delivery goes: a subscription's endpoint or a job's own ``callback_url``."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["subscription", "callback"]
    url: str
    subscription_id: str | None = None

    @property
    def key(self) -> str:
        return f"sub:{self.subscription_id}" if self.kind == "subscription" else f"cb:{self.url}"


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Delivery(BaseModel):
    """One event to one target; its id is deterministic so fanning out the same event twice creates nothing new."""

    model_config = ConfigDict(frozen=True)

    delivery_id: str
    event_id: str
    event_type: str
    tenant: str
    target: DeliveryTarget
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    replay_id: str | None = None
    max_attempts: int | None = Field(default=None, ge=1)  # None: the configured schedule (test pings use 1)

    @classmethod
    def of(
        cls,
        *,
        event_id: str,
        event_type: str,
        tenant: str,
        target: DeliveryTarget,
        replay_id: str | None = None,
        max_attempts: int | None = None,
    ) -> Delivery:
        return cls(
            delivery_id=delivery_id(event_id, target, replay_id),
            event_id=event_id,
            event_type=event_type,
            tenant=tenant,
            target=target,
            replay_id=replay_id,
            max_attempts=max_attempts,
        )


def delivery_id(event_id: str, target: DeliveryTarget, replay_id: str | None = None) -> str:
    """Deterministic id of delivering ``event_id`` to ``target`` (a replay is a new delivery, same webhook-id)."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{event_id}|{target.key}|{replay_id or ''}"))
