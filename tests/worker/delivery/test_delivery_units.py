"""Delivery rules that need no services: retry schedule, signatures, subscriptions, target checks, time parsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks.webhooks import Webhook

from schemas.errors import ConfigError, ErrorCode, GuardqError
from schemas.netpolicy import AddressPolicy, check_url
from schemas.settings import Settings, load_settings
from schemas.webhooks import DeliveryTarget, Subscription, delivery_id, secret_bytes
from worker.cache import CacheKey
from worker.delivery.webhooks.deliverer import retry_delay_s
from worker.delivery.webhooks.replay import parse_time
from worker.delivery.webhooks.sender import retry_after_s, sign

DEFAULTS = Settings()


def test_the_default_retry_schedule_spans_about_a_day_in_eight_attempts() -> None:
    assert 7 == len(DEFAULTS.webhook_retry_schedule_s)
    assert 20 * 3600 <= sum(DEFAULTS.webhook_retry_schedule_s) <= 30 * 3600
    assert all(
        a <= b
        for a, b in zip(DEFAULTS.webhook_retry_schedule_s[:5], DEFAULTS.webhook_retry_schedule_s[1:6], strict=True)
    )


@pytest.mark.parametrize("attempts_done", range(1, 8))
def test_each_retry_delay_is_the_scheduled_one_within_the_jitter(attempts_done: int) -> None:
    base = DEFAULTS.webhook_retry_schedule_s[attempts_done - 1]
    delays = [retry_delay_s(attempts_done, DEFAULTS) for _ in range(200)]
    assert all(d is not None and base * 0.8 - 0.001 <= d <= base * 1.2 + 0.001 for d in delays)
    assert len(set(delays)) > 100  # jittered, not a fixed value


def test_no_retry_is_left_after_the_last_scheduled_attempt() -> None:
    assert retry_delay_s(8, DEFAULTS) is None


def test_retry_after_is_honoured_when_longer_and_capped_at_the_maximum() -> None:
    settings = Settings(webhook_retry_schedule_s=[1.0], webhook_retry_after_max_s=600)
    assert 120.0 == retry_delay_s(1, settings, retry_after=120)
    assert 600.0 == retry_delay_s(1, settings, retry_after=10_000)
    delay = retry_delay_s(1, settings, retry_after=0.1)
    assert delay is not None and delay >= 0.8


def test_retry_after_reads_delta_seconds_and_http_dates_and_ignores_garbage() -> None:
    assert 120.0 == retry_after_s("120")
    when = datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    assert 60.0 == retry_after_s(format_datetime(when, usegmt=True), now=(when - timedelta(seconds=60)).timestamp())
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def test_our_signature_verifies_with_the_standardwebhooks_reference_library() -> None:
    sub = Subscription(url="https://hooks.example.com/x")
    body = json.dumps({"id": "e1", "type": "guardq.moderation.completed"}).encode()
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "e1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(sub.secret, "e1", timestamp, body),
    }
    assert {"id": "e1", "type": "guardq.moderation.completed"} == Webhook(sub.secret).verify(body, headers)


def test_a_new_subscription_gets_a_whsec_secret_of_32_random_bytes() -> None:
    a, b = Subscription(url="https://a.example.com/"), Subscription(url="https://a.example.com/")
    assert a.secret.startswith("whsec_") and 32 == len(secret_bytes(a.secret))
    assert a.secret != b.secret and a.id != b.id


def test_a_subscription_filters_on_tenant_and_event_type() -> None:
    sub = Subscription(url="https://a.example.com/", tenant="acme", event_types=["failed"])
    assert ["guardq.moderation.failed"] == sub.event_types
    assert sub.wants("acme", "guardq.moderation.failed")
    assert not sub.wants("acme", "guardq.moderation.completed")
    assert not sub.wants("other", "guardq.moderation.failed")
    assert Subscription(url="https://a.example.com/", tenant="acme").wants("acme", "guardq.moderation.completed")


def test_an_unknown_event_type_in_a_filter_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type 'deleted'"):
        Subscription(url="https://a.example.com/", event_types=["deleted"])


def test_delivery_ids_are_stable_per_event_and_target_and_new_per_replay() -> None:
    target = DeliveryTarget(kind="subscription", url="https://a.example.com/", subscription_id="sub_1")
    assert delivery_id("e1", target) == delivery_id("e1", target)
    assert delivery_id("e1", target) != delivery_id("e2", target)
    assert delivery_id("e1", target) != delivery_id("e1", target, "replay-1")


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",  # 127.0.0.1 as a decimal integer
    ],
)
def test_a_target_that_resolves_inside_is_refused_as_forbidden_target(url: str) -> None:
    with pytest.raises(GuardqError) as caught:
        check_url(url, AddressPolicy(code=ErrorCode.FORBIDDEN_TARGET), allow_http=False)
    assert ErrorCode.FORBIDDEN_TARGET == caught.value.code


def test_plain_http_and_urls_with_credentials_are_refused_unless_allowed() -> None:
    policy = AddressPolicy(["127.0.0.2/32"], code=ErrorCode.FORBIDDEN_TARGET)
    with pytest.raises(GuardqError, match="scheme 'http' is not allowed"):
        check_url("http://127.0.0.2/hook", policy, allow_http=False)
    with pytest.raises(GuardqError, match="credentials"):
        check_url("https://user:pw@127.0.0.2/hook", policy, allow_http=False)
    check_url("http://127.0.0.2:8080/hook", policy, allow_http=True)  # an explicitly allowed network passes


def test_times_for_replay_read_ages_iso_dates_and_unix_seconds() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert now - timedelta(hours=2) == parse_time("2h", now=now)
    assert now - timedelta(minutes=90) == parse_time("90m", now=now)
    assert datetime(2026, 5, 1, 10, 0, tzinfo=UTC) == parse_time("2026-05-01T10:00:00Z")
    assert datetime(2026, 5, 1, 10, 0, tzinfo=UTC) == parse_time("2026-05-01T10:00:00")
    assert datetime.fromtimestamp(1777000000, UTC) == parse_time("1777000000")
    with pytest.raises(GuardqError, match="cannot read time 'yesterday'"):
        parse_time("yesterday")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GUARDQ_WEBHOOK_RETRY_SCHEDULE_S", "[5, -1]"),
        ("GUARDQ_WEBHOOK_ALLOWED_NETWORKS", '["not-a-network"]'),
        ("GUARDQ_RESULTS_URI", "https://bucket/prefix"),
        ("GUARDQ_VERDICT_CACHE_TTL_S", "-5"),
    ],
)
def test_a_bad_delivery_setting_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_cache_keys_differ_by_policy_image_variant_and_simulation() -> None:
    base = CacheKey("llavaguard-7b", "p" * 64, "i" * 64, True, True, False)
    variants = {
        base.redis_key(),
        CacheKey("llavaguard-7b", "q" * 64, "i" * 64, True, True, False).redis_key(),
        CacheKey("llavaguard-7b", "p" * 64, "j" * 64, True, True, False).redis_key(),
        CacheKey("llavaguard-7b", "p" * 64, "i" * 64, False, True, False).redis_key(),
        CacheKey("llavaguard-7b", "p" * 64, "i" * 64, True, False, False).redis_key(),
        CacheKey("llavaguard-7b", "p" * 64, "i" * 64, True, True, True).redis_key(),
    }
    assert 6 == len(variants)
