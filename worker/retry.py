"""The one retry policy: exponential backoff with full jitter, capped below the broker's visibility timeout; and
which errors are the job's, which are transient, and which are this worker's own (``WorkerFault``)."""

from __future__ import annotations

import random
import re

from schemas.errors import ErrorCode, GuardqError, TransientError, WorkerFault
from schemas.settings import Settings

_STATUS = re.compile(r"\((\d{3})\)")
# SGLang answers 400 to a second request with an rid it is still serving (a redelivered attempt while the dead
# worker's request runs on): not the job's fault, and gone once the first request ends.
_DUPLICATE_RID = "duplicate request id"


def _status(error: GuardqError) -> int | None:
    status = error.context.get("status")
    if isinstance(status, int):
        return status
    found = _STATUS.search(error.message)
    return int(found.group(1)) if found else None


def reclassify(error: GuardqError) -> GuardqError:
    """The branch an error belongs to once its details are read.

    A 400 from SGLang is the request's own problem (context too long, an image it cannot decode): permanent. But a
    404 means the URL does not point at SGLang's API and 401/403 a wrong API key — every job would fail the same
    way, so they are the worker's fault; and a duplicate request id is transient.
    """
    if error.code is not ErrorCode.INFERENCE_REJECTED or isinstance(error, WorkerFault | TransientError):
        return error
    status = _status(error)
    if status in {401, 403}:
        return WorkerFault(f"SGLang refuses this worker's credentials: {error.message}", cause="sglang_unauthorized")
    if status in {404, 405}:
        return WorkerFault(
            f"GUARDQ_SGLANG_URL does not lead to SGLang's chat API: {error.message}", cause="sglang_not_found"
        )
    if status == 400 and _DUPLICATE_RID in error.message.lower():
        return TransientError(error.message, code=ErrorCode.INFERENCE_UNAVAILABLE)
    return error


def should_retry(error: GuardqError, retries_done: int, settings: Settings) -> bool:
    """Transient errors retry until ``GUARDQ_MAX_RETRIES`` retries have been spent; permanent ones never."""
    return isinstance(error, TransientError) and retries_done < settings.max_retries


def backoff_s(retries_done: int, settings: Settings, *, retry_after: float | None = None) -> float:
    """Delay before retry number ``retries_done + 1``.

    The cap stays under half the visibility timeout: a countdown longer than it would make Redis redeliver the
    message while it waits (Celery #2599/#4400).
    """
    cap = min(settings.retry_backoff_max_s, settings.visibility_timeout_s / 2)
    ceiling = min(cap, settings.retry_backoff_base_s * (2**retries_done))
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return round(delay, 3)
