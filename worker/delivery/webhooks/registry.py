"""Webhook subscriptions in Redis: add, list, remove, enable, disable; per-tenant secrets for per-job callback URLs.

The one writer of ``guardq:webhooks:subscriptions`` and of the callback secrets: the CLI and the API manage them
here, and the webhook worker disables a subscription here when its endpoint answers 410.

Every target URL passes the same SSRF address policy as image URLs (``schemas/netpolicy.py``) when it is
registered; the webhook worker checks it again at send time, on the address it actually connects to.
"""

from __future__ import annotations

from pathlib import Path

import redis

from schemas.errors import ErrorCode, PermanentError
from schemas.keys import VERDICT_STREAM
from schemas.netpolicy import AddressPolicy, check_url
from schemas.settings import Settings
from schemas.webhooks import Subscription, new_secret
from worker.delivery.keys import WEBHOOK_DISPATCH_GROUP, WEBHOOK_SUBSCRIPTIONS, callback_secret_key

_PUT_IF_PRESENT = Path(__file__).with_name("registry_put_if_present.lua").read_text()


def ensure_dispatch_group(client: redis.Redis[bytes]) -> None:
    """Create the dispatcher's consumer group at the stream's end if missing.

    Called when a subscription is added and when the dispatcher starts, so every event published after either
    is fanned out even if the webhook worker was down at the time (the group remembers the position).
    """
    try:
        client.xgroup_create(VERDICT_STREAM, WEBHOOK_DISPATCH_GROUP, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def check_target(url: str, settings: Settings) -> None:
    """Raise :class:`PermanentError` (``forbidden_target``) unless ``url`` may receive webhooks.

    The one check for every webhook target: subscriptions when they are registered, a job's ``callback_url`` when
    the job is submitted (API, ``guardq enqueue``). A DNS failure that may pass is a :class:`TransientError`.
    """
    policy = AddressPolicy(settings.webhook_allowed_networks, code=ErrorCode.FORBIDDEN_TARGET)
    check_url(url, policy, allow_http=settings.webhook_allow_http)


class SubscriptionRegistry:
    """Subscriptions live in one Redis hash (id -> JSON); a few hundred per deployment is the expected scale."""

    def __init__(self, client: redis.Redis[bytes], settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._put_if_present = client.register_script(_PUT_IF_PRESENT)

    def check_target(self, url: str) -> None:
        """:func:`check_target` under this registry's settings."""
        check_target(url, self.settings)

    def add(
        self, *, url: str, tenant: str = "default", event_types: list[str] | None = None, description: str | None = None
    ) -> Subscription:
        """Validate and store a new subscription with a fresh ``whsec_`` secret (shown once, to the caller)."""
        subscription = Subscription(url=url, tenant=tenant, event_types=event_types or [], description=description)
        self.check_target(subscription.url)
        ensure_dispatch_group(self.redis)
        self.redis.hset(WEBHOOK_SUBSCRIPTIONS, subscription.id, subscription.model_dump_json())
        return subscription

    def get(self, subscription_id: str) -> Subscription | None:
        raw = self.redis.hget(WEBHOOK_SUBSCRIPTIONS, subscription_id)
        return Subscription.model_validate_json(raw) if raw else None

    def all(self, tenant: str | None = None) -> list[Subscription]:
        subs = [Subscription.model_validate_json(v) for v in self.redis.hvals(WEBHOOK_SUBSCRIPTIONS)]
        return sorted((s for s in subs if tenant is None or s.tenant == tenant), key=lambda s: s.created_at)

    def remove(self, subscription_id: str) -> bool:
        """Delete a subscription; its pending deliveries are dead-lettered when they come due."""
        return bool(self.redis.hdel(WEBHOOK_SUBSCRIPTIONS, subscription_id))

    def set_enabled(self, subscription_id: str, enabled: bool, reason: str | None = None) -> Subscription:
        """Enable or disable a subscription (the webhook worker disables one whose endpoint answered 410)."""
        current = self.get(subscription_id)
        if current is None:
            raise PermanentError(f"no webhook subscription {subscription_id!r}", code=ErrorCode.NOT_FOUND)
        if enabled:
            self.check_target(current.url)
        updated = current.model_copy(update={"enabled": enabled, "disabled_reason": None if enabled else reason})
        if not self._put_if_present(keys=[WEBHOOK_SUBSCRIPTIONS], args=[subscription_id, updated.model_dump_json()]):
            raise PermanentError(f"no webhook subscription {subscription_id!r}", code=ErrorCode.NOT_FOUND)
        return updated

    def disable(self, subscription: Subscription, reason: str) -> bool:
        """Disable ``subscription`` (as the caller read it) with ``reason``, unless it was removed meanwhile."""
        updated = subscription.model_copy(update={"enabled": False, "disabled_reason": reason})
        return bool(
            self._put_if_present(keys=[WEBHOOK_SUBSCRIPTIONS], args=[subscription.id, updated.model_dump_json()])
        )

    def stored_callback_secret(self, tenant: str) -> str | None:
        """The tenant's callback secret if it has one (never creates it: the sender signs only with existing ones)."""
        value = self.redis.get(callback_secret_key(tenant))
        return value.decode() if value is not None else None

    def callback_secret(self, tenant: str, *, rotate: bool = False) -> str:
        """The tenant's secret for signing per-job ``callback_url`` deliveries, created on first use."""
        key = callback_secret_key(tenant)
        if rotate:
            self.redis.set(key, new_secret())
        else:
            self.redis.set(key, new_secret(), nx=True)
        value = self.redis.get(key)
        assert value is not None
        return value.decode()
