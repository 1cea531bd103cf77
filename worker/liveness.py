"""Which worker processes are alive: one lease per *incarnation*, refreshed while the process lives.

An incarnation is one run of one worker node: ``<node>#<pid>-<random>``. A node restarted under the same name (the
fleet launcher, a container restart, the chaos tests) is a new incarnation, so the messages its predecessor held
are known to be orphans at once. The lease (``schemas.keys.worker_lease_key``) is a Redis string with a TTL of
three heartbeat intervals, refreshed every interval by a daemon thread; its expiry is judged by Redis' clock, so
clock skew between hosts does not matter. A clean stop deletes it.

Readers: ``worker.reclaim`` (hand back a dead incarnation's reserved messages) and ``worker.cache`` (take over a
verdict-cache lock whose holder died). The fleet registry hash of the node carries the incarnation too, for
``guardq fleet status``.
"""

from __future__ import annotations

import os
import threading
import uuid

import redis
import structlog

from schemas.keys import worker_lease_key

log = structlog.get_logger("guardq.liveness")
SEPARATOR = "#"


def new_incarnation(node: str) -> str:
    return f"{node}{SEPARATOR}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def node_of(incarnation: str) -> str:
    """The node name an incarnation belongs to (``gpu0@host`` of ``gpu0@host#123-ab12cd34``)."""
    return incarnation.rsplit(SEPARATOR, 1)[0]


def lease_ttl_s(heartbeat_interval_s: float) -> int:
    """Three missed refreshes and the lease is gone (the fleet registry's rule, at least 5 s)."""
    return max(5, int(3 * heartbeat_interval_s + 0.999))


class Liveness:
    """Answers "is this incarnation alive?" from its lease."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client

    def alive(self, incarnation: str) -> bool:
        return bool(self._redis.exists(worker_lease_key(incarnation)))

    def alive_many(self, incarnations: list[str]) -> dict[str, bool]:
        pipe = self._redis.pipeline(transaction=False)
        for incarnation in incarnations:
            pipe.exists(worker_lease_key(incarnation))
        return {inc: bool(found) for inc, found in zip(incarnations, pipe.execute(), strict=True)}


class Lease:
    """This process's lease, refreshed every ``interval_s`` from a daemon thread."""

    def __init__(self, client: redis.Redis[bytes], incarnation: str, *, interval_s: float) -> None:
        self.incarnation = incarnation
        self._redis = client
        self._interval = interval_s
        self._ttl = lease_ttl_s(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="guardq-lease", daemon=True)

    def start(self) -> Lease:
        self.renew()
        self._thread.start()
        return self

    def renew(self) -> bool:
        try:
            self._redis.set(worker_lease_key(self.incarnation), "1", ex=self._ttl)
        except redis.RedisError as exc:
            log.warning("lease_renew_failed", error=repr(exc))
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.renew()

    def stop(self) -> None:
        """Stop renewing and give the lease up (a clean stop: whatever is still reserved is an orphan now)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._redis.delete(worker_lease_key(self.incarnation))
        except redis.RedisError as exc:
            log.warning("lease_release_failed", error=repr(exc))


_current = ""


def set_current_incarnation(incarnation: str) -> None:
    """Set once at worker start (``worker.lifecycle``), before the consumer reserves anything."""
    global _current  # noqa: PLW0603 - one incarnation per process
    _current = incarnation


def current_incarnation() -> str:
    """This process's incarnation, or "" outside a started worker (tests, tools)."""
    return _current
