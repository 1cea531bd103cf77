"""Two adjustments to kombu's Redis transport: a reconnect-race guard and client reuse on the hot path.

The guard: a kombu Redis-transport race otherwise kills a worker when Redis restarts.

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


_original_create_client = kombu_redis.Channel._create_client


def _create_client(self: Any, asynchronous: bool = False) -> Any:
    """Reuse one redis client per channel and pool instead of building a new one for every ack.

    kombu builds a fresh ``redis.Redis`` (and redis-py its ~200-entry response-callback table) for each
    acknowledgement and reservation; that was a tenth of a worker's CPU per job. A client is only a handle on the
    shared connection pool, safe across threads, so one per (channel, pool) does the same work. A new pool (after a
    reconnect) gets a new client.
    """
    pool = self.async_pool if asynchronous else self.pool
    clients: dict[bool, Any] = self.__dict__.setdefault("_guardq_clients", {})
    client = clients.get(asynchronous)
    if client is None or client.connection_pool is not pool:
        client = _original_create_client(self, asynchronous)  # type: ignore[no-untyped-call]
        clients[asynchronous] = client
    return client


def install() -> None:
    """Idempotently install both adjustments (called when the worker's Celery app is created)."""
    if kombu_redis.Channel._connparams is not _connparams:
        kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    if kombu_redis.Channel._create_client is not _create_client:
        kombu_redis.Channel._create_client = _create_client  # type: ignore[method-assign]
