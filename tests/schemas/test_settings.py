"""Settings come from GUARDQ_* variables; a bad value fails at start with one line naming the variable."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from schemas.settings import Settings, load_settings, redacted_url


def test_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GUARDQ_REDIS_URL", "GUARDQ_SGLANG_URL", "GUARDQ_MODEL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert ("redis://127.0.0.1:6379/0", "http://127.0.0.1:10000") == (s.redis_url, s.sglang_url)
    assert "AIML-TUDA/LlavaGuard-7B" == s.model
    assert (0.2, 0.95, 50, 500) == (s.temperature, s.top_p, s.top_k, s.max_new_tokens)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GUARDQ_REDIS_URL", "http://nope"),
        ("GUARDQ_SGLANG_URL", "localhost:10000"),
        ("GUARDQ_MODEL", "AIML-TUDA/LlavaGuard-999B"),
        ("GUARDQ_WORKER_CONCURRENCY", "lots"),
        ("GUARDQ_UPLOAD_STORE", "ftp://x"),
        ("GUARDQ_URL_ALLOWED_NETWORKS", '["not-a-net"]'),
    ],
)
def test_a_bad_value_is_reported_with_its_variable_name(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert var in message
    assert "\n" not in message


def test_model_aliases_resolve_to_the_registry_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDQ_MODEL", "llavaguard-v1.2-7b-ov")
    assert "AIML-TUDA/LlavaGuard-v1.2-7B-OV" == load_settings().model


def test_producers_and_workers_share_one_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDQ_VISIBILITY_TIMEOUT_S", "900")
    assert 900 == load_settings().broker_transport_options()["visibility_timeout"]


@pytest.mark.parametrize(("visibility", "expire"), [(8, 5), (300, 30), (3600, 60)])
def test_a_restore_lock_left_by_a_killed_worker_expires_long_before_kombus_five_minutes(
    visibility: int, expire: int
) -> None:
    assert expire == Settings(visibility_timeout_s=visibility).broker_transport_options()["unacked_mutex_expire"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rediss://:pw@h:6380/0", "rediss://:pw@h:6380/0?ssl_cert_reqs=required"),
        ("rediss://h/0?ssl_ca_certs=/ca.pem", "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"),
        ("rediss://h/0?ssl_cert_reqs=none", "rediss://h/0?ssl_cert_reqs=none"),
        ("redis://:pw@h:6379/0", "redis://:pw@h:6379/0"),
    ],
)
def test_a_rediss_url_verifies_certificates_unless_it_says_otherwise(url: str, expected: str) -> None:
    assert expected == Settings(redis_url=url).redis_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:s3cret@h:6380/0?ssl_ca_certs=/ca.pem", "rediss://user:***@h:6380/0?ssl_ca_certs=/ca.pem"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_a_redacted_url_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert shown == redacted_url(url)
