"""Error codes on the wire and the one exception tree every guardq package raises.

A failed job's event carries ``data.error.code`` from :class:`ErrorCode`; the code is stable, the message is for
people. Exceptions split into two branches: :class:`TransientError` (worth retrying with backoff) and
:class:`PermanentError` (retrying cannot help; the job fails at once).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable machine-readable failure codes carried by ``guardq.moderation.failed`` events."""

    INVALID_JOB = "invalid_job"
    INVALID_SOURCE = "invalid_source"
    NOT_FOUND = "not_found"
    ACCESS_DENIED = "access_denied"
    FORBIDDEN_SOURCE = "forbidden_source"
    TOO_LARGE = "too_large"
    EMPTY_IMAGE = "empty_image"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED_IMAGE = "truncated_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    # Animated images and videos (worker/frames.py): more frames or a longer running time than the limits allow
    TOO_MANY_FRAMES = "too_many_frames"
    TOO_LONG = "too_long"
    POLICY_UNKNOWN = "policy_unknown"
    INVALID_POLICY = "invalid_policy"
    POLICY_IN_USE = "policy_in_use"
    MODEL_UNKNOWN = "model_unknown"
    MODEL_UNAVAILABLE = "model_unavailable"
    FETCH_FAILED = "fetch_failed"
    INFERENCE_UNAVAILABLE = "inference_unavailable"
    INFERENCE_TIMEOUT = "inference_timeout"
    INFERENCE_REJECTED = "inference_rejected"
    INVALID_MODEL_OUTPUT = "invalid_model_output"
    INTERNAL_ERROR = "internal_error"
    # Delivery (webhooks): a target URL the SSRF guard refuses, at registration or at send time
    FORBIDDEN_TARGET = "forbidden_target"
    # The worker, not the job, is broken (credentials, clock, server URL or key, Redis refusing writes). Never the
    # code of a failed event: such a job goes back to the queue and the worker pauses (worker/faults.py).
    WORKER_MISCONFIGURED = "worker_misconfigured"


class GuardqError(Exception):
    """Raised for every anticipated failure in guardq; the root of the one exception tree."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    retryable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.context = context

    def __str__(self) -> str:
        return self.message


class TransientError(GuardqError):
    """Raised when a retry later may succeed (SGLang 5xx/timeouts, connection loss, S3 throttling)."""

    retryable = True
    code = ErrorCode.INFERENCE_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        retry_after: float | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, code=code, **context)
        self.retry_after = retry_after


class PermanentError(GuardqError):
    """Raised when retrying cannot help: bad input, forbidden source, unknown policy or model."""

    retryable = False


class WorkerFault(GuardqError):
    """Raised when this worker cannot do *any* job: bad S3 credentials, a skewed clock, an SGLang URL that is not
    SGLang (404) or a wrong API key (401/403), a Redis that refuses writes (OOM, READONLY, MISCONF).

    Neither branch above: retrying the job cannot help *here*, and failing it would blame the job. The job is
    handed back to the queue untouched (no retry spent) for a healthy worker, and this worker stops consuming and
    reports ``cause`` (a short stable word, e.g. ``s3_credentials``) until a later attempt succeeds.
    """

    retryable = True
    code = ErrorCode.WORKER_MISCONFIGURED

    def __init__(self, message: str, *, cause: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.cause = cause


class ConfigError(PermanentError):
    """Raised when a ``GUARDQ_*`` setting (or a CLI option) holds a value guardq cannot use."""

    code = ErrorCode.INVALID_JOB
