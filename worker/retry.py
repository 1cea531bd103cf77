"""The one retry policy: exponential backoff with full jitter, capped below the broker's visibility timeout."""

from __future__ import annotations

import random

from schemas.errors import GuardqError, TransientError
from schemas.settings import Settings


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
