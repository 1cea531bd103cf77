"""Re-send jobs the broker lost, from the job records producers keep.

kombu's Redis transport takes a message with ``BRPOP`` and only then records it as unacknowledged. A worker killed
between the two, or a Redis crash between the two (the pop persisted, its reply or the bookkeeping not), leaves a
job that is in no queue, in no ``unacked`` hash and known to nobody alive (seen in ``make test`` with
``appendfsync always`` and with ``kill -9``). Producers therefore keep each job's message in its job hash and its
id in the open-jobs index (``guardq:jobs:open``) until the terminal event is published.

Every ``GUARDQ_RECONCILE_INTERVAL_S`` one worker (a Redis lock) sweeps the index: a job with a terminal event leaves
it; a job whose id is in a queue list or in ``unacked`` is on its way; any other job becomes a *suspect*, and a
suspect still missing at a later sweep at least one interval on is sent again under the same id (the publish guard
makes a second run harmless). Two sightings keep a message that is between ``BRPOP`` and its bookkeeping for a
moment from being taken for lost. A sweep is skipped while the queues or the index hold more than
``GUARDQ_RECONCILE_MAX_SCAN`` entries.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis
import structlog

from schemas.keys import OPEN_JOBS, RECONCILE_LOCK, RECONCILE_SUSPECTS, job_key, terminal_guard_key

log = structlog.get_logger("guardq.reconcile")
UNACKED = "unacked"  # kombu's hash of reserved, unacknowledged messages
Send = Callable[[dict[str, Any], str, str], object]  # (message, queue, job id)


def _task_id(envelope: Any) -> str | None:
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


def _ids_in(values: Iterable[bytes], *, unacked: bool) -> set[str]:
    found: set[str] = set()
    for raw in values:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        envelope = value[0] if unacked and isinstance(value, list) and value else value
        task_id = _task_id(envelope)
        if task_id is not None:
            found.add(task_id)
    return found


class Reconciler:
    """Sweeps the open-jobs index; safe to run from every worker (one sweeps at a time)."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        send: Send,
        *,
        node: str,
        grace_s: float,
        max_scan: int = 200_000,
        batch: int = 10_000,
        lock_key: str = RECONCILE_LOCK,
        suspects_key: str = RECONCILE_SUSPECTS,
    ) -> None:
        self._redis = client
        self._send = send
        self._node = node
        self._grace = grace_s
        self._max_scan = max_scan
        self._batch = batch
        self._lock = lock_key
        self._suspects = suspects_key

    def present(self, queues: Iterable[str]) -> set[str] | None:
        """Task ids waiting in these queue lists or reserved (``unacked``); None when the queues are too long."""
        lengths = {queue: int(self._redis.llen(queue)) for queue in queues}
        if sum(lengths.values()) > self._max_scan:
            log.info("reconcile_skipped_deep_queues", queued=sum(lengths.values()), limit=self._max_scan)
            return None
        ids: set[str] = set()
        for queue, length in lengths.items():
            for start in range(0, length, 1000):
                ids |= _ids_in(self._redis.lrange(queue, start, start + 999), unacked=False)
        return ids | _ids_in(self._redis.hvals(UNACKED), unacked=True)

    def sweep(self, now: float | None = None) -> int:
        """One pass; return how many jobs were sent again (0 when another worker holds the sweep)."""
        if not self._redis.set(self._lock, self._node, nx=True, ex=300):
            return 0
        try:
            return self._sweep(time.time() if now is None else now)
        finally:
            self._redis.delete(self._lock)

    def _sweep(self, now: float) -> int:
        total = int(self._redis.zcard(OPEN_JOBS))
        if total > self._max_scan:
            log.info("reconcile_skipped_many_open_jobs", open=total, limit=self._max_scan)
            return 0
        records: dict[str, tuple[list[bytes | None], int]] = {}
        for start in range(0, total, self._batch):
            ids = [raw.decode() for raw in self._redis.zrange(OPEN_JOBS, start, start + self._batch - 1)]
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(job_key(job_id), ["message", "queue"])
                pipe.exists(terminal_guard_key(job_id))
            replies = pipe.execute()
            records |= {job_id: (replies[2 * i], replies[2 * i + 1]) for i, job_id in enumerate(ids)}
        on_the_way = self.present({queue.decode() for (_, queue), _ in records.values() if queue})
        if on_the_way is None:
            return 0
        suspects = {k.decode(): float(v) for k, v in self._redis.hgetall(self._suspects).items()}
        missing: set[str] = set()
        resent = 0
        for job_id, ((message, queue), finished) in records.items():
            if finished:
                self._redis.zrem(OPEN_JOBS, job_id)
            elif job_id in on_the_way:
                continue
            elif message is None or queue is None:
                self._redis.zrem(OPEN_JOBS, job_id)
                log.error("job_record_lost", job_id=job_id)  # nothing left to re-send from (expired, or lost too)
            elif job_id in suspects and now - suspects[job_id] >= self._grace:
                self._send(json.loads(message), queue.decode(), job_id)
                self._redis.hincrby(job_key(job_id), "reconciled", 1)
                log.warning("job_resent", job_id=job_id, queue=queue.decode(), missing_since=suspects[job_id])
                resent += 1
            else:
                missing.add(job_id)
        new: dict[str | bytes, bytes | float | int | str] = {j: now for j in missing if j not in suspects}
        cleared = [job_id for job_id in suspects if job_id not in missing]
        if new:
            self._redis.hset(self._suspects, mapping=new)
        if cleared:
            self._redis.hdel(self._suspects, *cleared)
        return resent


class ReconcileLoop:
    """Sweeps every ``interval_s`` from a daemon thread."""

    def __init__(self, reconciler: Reconciler, *, interval_s: float) -> None:
        self._reconciler = reconciler
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="guardq-reconcile", daemon=True)

    def start(self) -> ReconcileLoop:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._reconciler.sweep()
            except redis.RedisError as exc:
                log.info("reconcile_skipped", error=repr(exc))  # Redis down; try again next interval

    def stop(self) -> None:
        self._stop.set()
