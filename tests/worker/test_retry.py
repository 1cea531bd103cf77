"""One retry policy: exponential backoff with jitter, capped under the visibility timeout."""

from __future__ import annotations

from schemas.errors import PermanentError, TransientError
from schemas.settings import Settings
from worker.retry import backoff_s, should_retry


def test_transient_errors_retry_until_the_budget_is_spent_and_permanent_ones_never() -> None:
    settings = Settings(max_retries=2)
    assert should_retry(TransientError("x"), 0, settings)
    assert should_retry(TransientError("x"), 1, settings)
    assert not should_retry(TransientError("x"), 2, settings)
    assert not should_retry(PermanentError("x"), 0, settings)


def test_backoff_grows_exponentially_with_jitter_and_stays_under_half_the_visibility_timeout() -> None:
    settings = Settings(retry_backoff_base_s=1, retry_backoff_max_s=10_000, visibility_timeout_s=60)
    for retries, ceiling in [(0, 1), (1, 2), (3, 8)]:
        delays = [backoff_s(retries, settings) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert all(backoff_s(20, settings) <= 30 for _ in range(20))


def test_retry_after_from_the_server_is_honoured_within_the_cap() -> None:
    settings = Settings(retry_backoff_base_s=0.1, retry_backoff_max_s=100, visibility_timeout_s=600)
    assert 7 <= backoff_s(0, settings, retry_after=7)
    assert 100 >= backoff_s(0, settings, retry_after=5000)
