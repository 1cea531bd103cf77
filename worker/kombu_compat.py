"""A guard for a kombu Redis-transport race that otherwise kills a worker when Redis restarts.

On a broker connection loss Celery first detaches the transport (``Connection.collect``) and then closes the
connection; closing the channel tries to restore unacknowledged messages, which needs a Redis client built from
the now-detached transport (``transport.client is None``) and raises AttributeError — not a connection error — so
the consumer dies with "Unrecoverable error" (seen with kombu 5.7 / Celery 5.7, reproduced by
tests/chaos/test_redis_restart.py). Raising a connection error instead lets kombu skip that restore (the visibility
timeout sweep returns those messages) and Celery reconnects normally.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_original_connparams = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("broker transport already detached (reconnecting)")
    return _original_connparams(self, asynchronous)  # type: ignore[no-untyped-call]


def install() -> None:
    """Idempotently install the guard (called when the worker's Celery app is created)."""
    if kombu_redis.Channel._connparams is not _connparams:
        kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
