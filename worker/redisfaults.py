"""What a Redis error means for the job in hand: wait for Redis, stop this worker, or fail the job.

Not every ``RedisError`` is a lost connection. Three kinds, each handled differently by ``worker.tasks``:

- ``UNAVAILABLE`` — connection refused or lost, a timeout, Redis still loading its dataset, a busy script,
  ``TRYAGAIN``/``CLUSTERDOWN``: Redis will be back. The message goes back (or stays) unacknowledged.
- ``REFUSING`` — Redis answers but refuses this worker's writes: ``OOM`` (maxmemory reached), ``READONLY`` (a
  replica, e.g. after a failover), ``MISCONF`` (snapshots failing), ``NOPERM``/``NOAUTH``/``WRONGPASS``,
  ``MASTERDOWN``/``NOREPLICAS``. Every job would meet it: a :class:`~schemas.errors.WorkerFault` (the worker
  pauses and says why, the job goes back to its queue).
- ``DATA`` — anything else Redis answers with (``WRONGTYPE``, a script error): about particular keys, not the
  server. Retrying would meet it again, so the job fails with ``internal_error`` naming the error.
"""

from __future__ import annotations

from enum import StrEnum

from redis.exceptions import AuthenticationError, ConnectionError, RedisError, ResponseError, TimeoutError

from schemas.errors import WorkerFault


class RedisTrouble(StrEnum):
    UNAVAILABLE = "unavailable"
    REFUSING = "refusing"
    DATA = "data"


_UNAVAILABLE_PREFIXES = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN")
_REFUSING_PREFIXES = ("OOM", "READONLY", "MISCONF", "NOPERM", "NOAUTH", "WRONGPASS", "MASTERDOWN", "NOREPLICAS")


def _prefix(exc: RedisError) -> str:
    text = str(exc).lstrip()
    if text.startswith("ERR "):  # a script relaying a command's error: "ERR ... OOM command not allowed ..."
        words = [w for w in text.split() if w.isupper() and w.isalpha()]
        return next((w for w in words if w in _REFUSING_PREFIXES + _UNAVAILABLE_PREFIXES), "ERR")
    return text.split(" ", 1)[0].upper()


def classify_redis_error(exc: RedisError) -> RedisTrouble:
    if isinstance(exc, AuthenticationError):
        return RedisTrouble.REFUSING
    if isinstance(exc, ConnectionError | TimeoutError):
        return RedisTrouble.UNAVAILABLE
    if isinstance(exc, ResponseError):
        prefix = _prefix(exc)
        if prefix in _REFUSING_PREFIXES:
            return RedisTrouble.REFUSING
        if prefix in _UNAVAILABLE_PREFIXES:
            return RedisTrouble.UNAVAILABLE
        return RedisTrouble.DATA
    return RedisTrouble.DATA


def as_worker_fault(exc: RedisError) -> WorkerFault:
    """The fault a ``REFUSING`` error stands for, with a cause such as ``redis_oom`` or ``redis_readonly``."""
    prefix = "auth" if isinstance(exc, AuthenticationError) else _prefix(exc).lower()
    return WorkerFault(f"Redis refuses this worker's writes: {exc}", cause=f"redis_{prefix}")
