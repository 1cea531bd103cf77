"""Per-tenant rate limit in Redis: a fixed window counter (INCR + EXPIRE in one round trip).

Every authenticated request of a tenant counts, across all API processes. Past ``GUARDQ_API_RATE_LIMIT``
requests in a ``GUARDQ_API_RATE_WINDOW_S`` window the API answers 429 with ``Retry-After`` = seconds until the
window ends. A fixed window may let up to twice the limit through around a window boundary; that is the price of
one counter per tenant and one round trip per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis

from producers.api.errors import ApiError
from producers.rediskeys import rate_limit_key


class RateLimiter:
    def __init__(
        self, client: redis.Redis[bytes], limit: int, window_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = client
        self.limit = limit
        self.window_s = window_s
        self._clock = clock

    def hit(self, tenant: str) -> int:
        """Count one request; return how many remain in this window, or raise 429."""
        now = self._clock()
        window = int(now // self.window_s)
        key = rate_limit_key(tenant, window)
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, self.window_s + 1)
        count = int(pipe.execute()[0])
        if count > self.limit:
            retry_after = max(1, math.ceil((window + 1) * self.window_s - now))
            raise ApiError(
                429,
                "rate_limited",
                f"tenant {tenant!r} exceeded {self.limit} requests per {self.window_s}s; retry in {retry_after}s",
                headers={"Retry-After": str(retry_after)},
            )
        return self.limit - count
