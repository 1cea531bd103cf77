"""Hand the reserved messages of dead workers back to their queues within seconds, not after the visibility timeout.

kombu's Redis transport returns an unacknowledged message only once it is older than the visibility timeout (3,600 s
by default): a ``kill -9``ed or OOM-killed worker's jobs would sit an hour as ``running``, and the reconciler rightly
treats anything in ``unacked`` as on its way. Each worker therefore records which incarnation reserved each message
(``guardq:unacked:owners``, written by ``worker.kombu_compat`` before kombu records the reservation) and keeps a
lease while it lives (``worker.liveness``).

Every ``GUARDQ_RECLAIM_INTERVAL_S`` one worker (a Redis lock it owns and releases by token) looks at the owners of
the reserved messages:

- an incarnation whose lease exists is alive: its messages are left alone;
- an earlier incarnation of *this* worker's own node name is dead for certain (the node was restarted): its
  messages go back at once;
- any other incarnation without a lease is a suspect; still without one at a sweep ``grace_s`` later (Redis time),
  it is dead and its messages go back. Two sightings keep a Redis restart (leases past their TTL come back expired
  until each worker's next renewal) from being taken for a fleet-wide death.

A live worker can orphan messages too: when the broker connection drops (a Redis restart), Celery rebuilds its
channel and kombu cannot restore what the old one held, and an acknowledgement that fails leaves its message
reserved. Those entries carry a live incarnation, so every worker also audits *its own* entries
(:class:`OwnReservations`, every ``AUDIT_EVERY_S``): a message recorded as its own that it holds in no task
request at two audits in a row goes back.

Everything that reads kombu's own state (its ``unacked`` hash, ``restore_by_tag``) is in ``worker.kombu_compat``.
A message goes back through kombu's own ``restore_by_tag`` (one WATCH/MULTI transaction: gone from ``unacked``,
its index and the owners hash, pushed to the head of its queue, flagged redelivered), so a message restored twice,
or acknowledged meanwhile, is pushed at most once. The cost of a sweep is one ``HGETALL`` of the owners hash, which
holds only the messages reserved right now (fleet concurrency), plus one ``EXISTS`` per incarnation.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence

import redis
import structlog

from schemas.keys import RECLAIM_LOCK, RECLAIM_SUSPECTS, UNACKED_OWNERS
from worker.kombu_compat import still_reserved
from worker.liveness import Liveness, node_of
from worker.tokenlock import Releaser

log = structlog.get_logger("guardq.reclaim")
AUDIT_EVERY_S = 15.0
Restore = Callable[[Sequence[str]], None]  # put these delivery tags back on their queues (kombu restore_by_tag)


class Reclaimer:
    """One sweep at a time across the fleet; safe to run from every worker."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        restore: Restore,
        *,
        incarnation: str,
        grace_s: float,
        lock_key: str = RECLAIM_LOCK,
        suspects_key: str = RECLAIM_SUSPECTS,
        owners_key: str = UNACKED_OWNERS,
        lock_ttl_s: int = 60,
    ) -> None:
        self._redis = client
        self._restore = restore
        self._me = incarnation
        self._node = node_of(incarnation)
        self._grace = grace_s
        self._lock = lock_key
        self._suspects = suspects_key
        self._owners = owners_key
        self._lock_ttl = lock_ttl_s
        self._liveness = Liveness(client)
        self._release = Releaser(client)

    def sweep(self) -> int:
        """One pass; return how many reserved messages went back to their queues (0 while another worker sweeps)."""
        token = f"{self._me}:{uuid.uuid4().hex}"
        if not self._redis.set(self._lock, token, nx=True, ex=self._lock_ttl):
            return 0
        try:
            return self._sweep()
        finally:
            self._release(self._lock, token)

    def _sweep(self) -> int:
        owners = self._redis.hgetall(self._owners)
        by_owner: dict[str, list[str]] = defaultdict(list)
        for raw_tag, raw_owner in owners.items():
            by_owner[raw_owner.decode()].append(raw_tag.decode())
        seconds, micros = self._redis.time()
        now = seconds + micros / 1e6
        suspects = {k.decode(): float(v) for k, v in self._redis.hgetall(self._suspects).items()}
        alive = self._liveness.alive_many(sorted(by_owner))
        dead: list[str] = []
        missing: dict[str, float] = {}
        for owner, is_alive in alive.items():
            if is_alive or owner == self._me:
                continue
            if node_of(owner) == self._node:
                dead.append(owner)  # this node restarted: the earlier run is gone for certain
            elif owner in suspects and now - suspects[owner] >= self._grace:
                dead.append(owner)
            else:
                missing[owner] = suspects.get(owner, now)
        restored = sum(self._give_back(owner, by_owner[owner]) for owner in dead)
        fresh: dict[str | bytes, bytes | float | int | str] = {o: t for o, t in missing.items() if o not in suspects}
        stale = [o for o in suspects if o not in missing]
        if fresh:
            self._redis.hset(self._suspects, mapping=fresh)
        if stale:
            self._redis.hdel(self._suspects, *stale)
        return restored

    def _give_back(self, owner: str, tags: list[str]) -> int:
        held = still_reserved(self._redis, tags)
        gone = [tag for tag in tags if tag not in held]
        if gone:  # acknowledged, or killed between recording the owner and the reservation: nothing to give back
            self._redis.hdel(self._owners, *gone)
        if held:
            self._restore(held)
            log.warning("reclaimed_dead_worker_messages", incarnation=owner, messages=len(held))
        return len(held)


class OwnReservations:
    """Finds the messages this incarnation is recorded as holding but holds in no task request any more."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        restore: Restore,
        *,
        incarnation: str,
        held: Callable[[], set[str]],
        owners_key: str = UNACKED_OWNERS,
    ) -> None:
        self._redis = client
        self._restore = restore
        self._me = incarnation.encode()
        self._held = held
        self._owners = owners_key
        self._unheld: set[str] = set()

    def audit(self) -> int:
        """One audit; messages unheld at the previous audit and still unheld now go back. Returns how many."""
        mine = {tag.decode() for tag, owner in self._redis.hgetall(self._owners).items() if owner == self._me}
        unheld = mine - self._held()
        orphans = sorted(unheld & self._unheld)
        self._unheld = unheld - set(orphans)
        if not orphans:
            return 0
        present = still_reserved(self._redis, orphans)
        gone = [tag for tag in orphans if tag not in present]
        if gone:
            self._redis.hdel(self._owners, *gone)
        if present:
            self._restore(present)
            log.warning("reclaimed_own_orphaned_messages", messages=len(present), note="lost by a broker reconnect")
        return len(present)


class ReclaimLoop:
    """Sweeps every ``interval_s`` from a daemon thread (the first sweep at once: a restarted node's predecessor),
    and audits this worker's own reservations every ``audit_every_s``."""

    def __init__(
        self,
        reclaimer: Reclaimer,
        *,
        interval_s: float,
        own: OwnReservations | None = None,
        audit_every_s: float = AUDIT_EVERY_S,
    ) -> None:
        self._reclaimer = reclaimer
        self._own = own
        self._interval = interval_s
        self._audit_every = audit_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="guardq-reclaim", daemon=True)

    def start(self) -> ReclaimLoop:
        self._thread.start()
        return self

    def _loop(self) -> None:
        next_audit = time.monotonic() + self._audit_every
        while not self._stop.is_set():
            try:
                self._reclaimer.sweep()
                if self._own is not None and time.monotonic() >= next_audit:
                    next_audit = time.monotonic() + self._audit_every
                    self._own.audit()
            except redis.RedisError as exc:
                log.info("reclaim_skipped", error=repr(exc))  # Redis down; try again next interval
            except Exception:  # a bug must not end the loop silently
                log.exception("reclaim_failed")
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
