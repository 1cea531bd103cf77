"""One retry policy: exponential backoff with jitter, capped under the visibility timeout; and which errors are the
job's, which are transient and which are the worker's own."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode, PermanentError, TransientError, WorkerFault
from schemas.settings import Settings
from worker.retry import backoff_s, reclassify, should_retry


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


# --- which branch an error belongs to once its details are read (SGLang statuses) ------------------------------


def rejected(status: int, detail: str) -> PermanentError:
    """What the SGLang backend raises for a 4xx it does not retry."""
    return PermanentError(f"SGLang rejected the request ({status}): {detail}", code=ErrorCode.INFERENCE_REJECTED)


@pytest.mark.parametrize(
    ("status", "detail", "cause"),
    [
        (404, '{"detail": "Not Found"}', "sglang_not_found"),
        (405, "Method Not Allowed", "sglang_not_found"),
        (401, '{"detail": "Invalid API Key"}', "sglang_unauthorized"),
        (403, "Forbidden", "sglang_unauthorized"),
    ],
)
def test_a_wrong_sglang_url_or_key_is_the_workers_fault_not_the_jobs(status: int, detail: str, cause: str) -> None:
    error = reclassify(rejected(status, detail))
    assert isinstance(error, WorkerFault)
    assert cause == error.cause
    assert str(status) in error.message


@pytest.mark.parametrize(
    "detail",
    [
        "Requested token count exceeds the model's maximum context length of 4096 tokens.",
        "Could not decode image",
        "Content-Type must be application/json",
    ],
)
def test_a_genuinely_bad_request_stays_a_permanent_failure_of_the_job(detail: str) -> None:
    original = rejected(400, detail)
    assert original is reclassify(original)


def test_a_duplicate_request_id_is_transient() -> None:
    """A redelivered attempt while the dead worker's request with the same rid still runs on the server."""
    error = reclassify(rejected(400, '{"object": "error", "message": "Duplicate request ID detected: j.1"}'))
    assert isinstance(error, TransientError)
    assert ErrorCode.INFERENCE_UNAVAILABLE == error.code


def test_a_status_given_in_the_context_wins_over_the_message() -> None:
    error = PermanentError("the server said no", code=ErrorCode.INFERENCE_REJECTED, status=404)
    assert isinstance(reclassify(error), WorkerFault)
