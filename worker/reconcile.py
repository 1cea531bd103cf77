"""Re-send jobs the broker lost, at a cost proportional to what is suspicious, never to how much is open.

kombu's Redis transport takes a message with ``BRPOP`` and only then records it as unacknowledged. A worker killed
between the two, or a Redis crash between the two (the pop persisted, its reply or the bookkeeping not), leaves a
job that is in no queue, in no ``unacked`` hash and known to nobody alive. Producers therefore keep each job's
message in its job hash until the terminal event, and every unfinished job sits in exactly one index
(``worker/publish.py`` moves it, Redis time throughout):

- ``guardq:jobs:open:<queue>`` while its message waits in that queue (scored by when it joined the queue);
- ``guardq:jobs:running`` once a worker began it (scored by when).

Queues are first in, first out, so a job still in its queue's open index although a job that joined the queue
later has already begun (the queue's *watermark*, ``guardq:jobs:watermarks``) should have been taken: a suspect.
So is any open job of an empty queue older than ``margin_s``, and any running job whose message no worker holds
(``unacked``). The sweep reads only those: a range query per queue below its watermark and one on the running
index, each at most ``batch`` long, and ``unacked`` only when there are suspects. A backfill of a million queued
jobs costs it nothing; it never switches itself off.

A suspect neither finished nor reserved at a later sweep at least ``grace_s`` on is sent again under the same id
(the publish guard makes a second run harmless). Two sightings keep a message that is between ``BRPOP`` and its
bookkeeping for a moment from being taken for lost. One worker sweeps at a time: a Redis lock with a token, released
only by its holder.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import structlog

from schemas.keys import (
    OPEN_JOBS,
    OPEN_QUEUES,
    QUEUE_WATERMARKS,
    RECONCILE_LOCK,
    RECONCILE_SUSPECTS,
    RUNNING_JOBS,
    job_key,
    open_jobs_key,
    terminal_guard_key,
)
from schemas.records import FINISHED_STATES, JobField
from worker.kombu_compat import reserved_job_ids
from worker.tokenlock import Releaser

log = structlog.get_logger("guardq.reconcile")
REORDER_S = 2.0  # workers that BRPOP one queue may begin its jobs slightly out of order
Send = Callable[[dict[str, Any], str, str], object]  # (message, queue, job id)


class Reconciler:
    """Safe to run from every worker (one sweeps at a time)."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        send: Send,
        *,
        node: str,
        grace_s: float,
        margin_s: float | None = None,
        batch: int = 1000,
        lock_key: str = RECONCILE_LOCK,
        suspects_key: str = RECONCILE_SUSPECTS,
        lock_ttl_s: int = 300,
        also: Callable[[], object] | None = None,
    ) -> None:
        self._also = also  # more fleet-wide upkeep to run under the same lock (stream group warnings)
        self._redis = client
        self._send = send
        self._node = node
        self._grace = grace_s
        self._margin = margin_s if margin_s is not None else max(10.0, 2 * grace_s)
        self._batch = batch
        self._lock = lock_key
        self._suspects = suspects_key
        self._lock_ttl = lock_ttl_s
        self._release = Releaser(client)
        self.last_examined = 0  # jobs the last sweep looked at (its cost)

    def sweep(self, now: float | None = None) -> int:
        """One pass; return how many jobs were sent again (0 when another worker holds the sweep)."""
        token = f"{self._node}:{uuid.uuid4().hex}"
        if not self._redis.set(self._lock, token, nx=True, ex=self._lock_ttl):
            return 0
        try:
            if now is None:
                seconds, micros = self._redis.time()
                now = seconds + micros / 1e6
            resent = self._sweep(now)
            if self._also is not None:
                self._also()
            return resent
        finally:
            self._release(self._lock, token)

    def suspects_now(self, now: float) -> dict[str, str | None]:
        """Open jobs that should have been taken by now (job id -> queue), and running ones (job id -> None)."""
        found: dict[str, str | None] = {}
        queues = sorted(q.decode() for q in self._redis.smembers(OPEN_QUEUES))
        pipe = self._redis.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
            pipe.hget(QUEUE_WATERMARKS, queue)
        replies = pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        for i, queue in enumerate(queues):
            depth, mark = replies[2 * i], replies[2 * i + 1]
            bound = float(mark) - REORDER_S if mark is not None else float("-inf")
            if int(depth) == 0:
                bound = max(bound, now - self._margin)
            pipe.zrangebyscore(open_jobs_key(queue), "-inf", f"({bound}", start=0, num=self._batch)
        pipe.zrangebyscore(RUNNING_JOBS, "-inf", f"({now - self._grace}", start=0, num=self._batch)
        *per_queue, running = pipe.execute()
        for queue, ids in zip(queues, per_queue, strict=True):
            found |= {raw.decode(): queue for raw in ids}
        found |= {raw.decode(): None for raw in running if raw.decode() not in found}
        return found

    def _drain_legacy(self) -> None:
        """Move a page of the single pre-upgrade index into the per-queue ones (bounded work per sweep)."""
        ids = [raw.decode() for raw in self._redis.zrange(OPEN_JOBS, 0, self._batch - 1, withscores=False)]
        if not ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), JobField.QUEUE)
            pipe.zscore(OPEN_JOBS, job_id)
        replies = pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        for i, job_id in enumerate(ids):
            queue, score = replies[2 * i], replies[2 * i + 1]
            if queue is not None and score is not None:
                pipe.zadd(open_jobs_key(queue.decode()), {job_id: score}, nx=True)
                pipe.sadd(OPEN_QUEUES, queue)
            pipe.zrem(OPEN_JOBS, job_id)
        pipe.execute()

    def _sweep(self, now: float) -> int:
        self._drain_legacy()
        candidates = self.suspects_now(now)
        self.last_examined = len(candidates)
        if not candidates:
            self._redis.delete(self._suspects)
            return 0
        ids = list(candidates)
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(job_key(job_id), [JobField.STATE, JobField.MESSAGE, JobField.QUEUE])
            pipe.exists(terminal_guard_key(job_id))
        replies = pipe.execute()
        reserved = reserved_job_ids(self._redis)
        suspects = {k.decode(): float(v) for k, v in self._redis.hgetall(self._suspects).items()}
        missing: set[str] = set()
        resent = 0
        for i, job_id in enumerate(ids):
            (state, message, queue_raw), guarded = replies[2 * i], replies[2 * i + 1]
            queue = queue_raw.decode() if queue_raw is not None else candidates[job_id]
            if (state or b"").decode() in FINISHED_STATES or guarded:
                self._forget(job_id, queue)
            elif job_id in reserved:
                continue  # a worker holds it: on its way
            elif message is None or queue is None:
                self._forget(job_id, queue)
                log.error("job_record_lost", job_id=job_id)  # nothing left to re-send from (expired, or lost too)
            elif job_id in suspects and now - suspects[job_id] >= self._grace:
                self._resend(job_id, json.loads(message), queue, now, missing_since=suspects[job_id])
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

    def _forget(self, job_id: str, queue: str | None) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(RUNNING_JOBS, job_id)
        if queue is not None:
            pipe.zrem(open_jobs_key(queue), job_id)
        pipe.execute()

    def _resend(self, job_id: str, message: dict[str, Any], queue: str, now: float, *, missing_since: float) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(RUNNING_JOBS, job_id)
        pipe.zadd(open_jobs_key(queue), {job_id: now})  # its new message joins the back of the queue
        pipe.hincrby(job_key(job_id), JobField.RECONCILED, 1)
        pipe.execute()
        self._send(message, queue, job_id)
        log.warning("job_resent", job_id=job_id, queue=queue, missing_since=missing_since)


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
            started = time.perf_counter()
            try:
                resent = self._reconciler.sweep()
            except redis.RedisError as exc:
                log.info("reconcile_skipped", error=repr(exc))  # Redis down; try again next interval
                continue
            if resent:
                log.info("reconcile_swept", resent=resent, seconds=round(time.perf_counter() - started, 4))

    def stop(self) -> None:
        self._stop.set()
