"""Re-send jobs the broker lost in a Redis crash, from the job records producers keep.

kombu's Redis transport takes a message with ``BRPOP`` and only then records it as unacknowledged; a Redis crash
between the two (the pop persisted, its reply or the bookkeeping not) leaves a job that is in no queue, in no
``unacked`` hash and known only to a worker that lost its connection (measured: 1 job in ~400 with
``appendfsync always``, tests/chaos/test_redis_restart.py). Producers therefore keep each job's message in its
job hash and its id in the open-jobs index (``guardq:jobs:open``) until the terminal event is published.

After Redis restarts (its ``run_id`` changes) one worker sweeps the index: a job with a terminal event leaves it; a
job whose id is in a queue list or in ``unacked`` is still on its way; any other job is sent again under the same
id (the publish guard makes a second run harmless). The scan reads the queues once per restart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast

import orjson
import redis
import structlog

from schemas.keys import OPEN_JOBS, RECONCILE_LOCK, RECONCILE_RUN_ID, job_key, terminal_guard_key

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
    """One per worker process; ``maybe_run`` is cheap (an INFO and a SET) unless Redis restarted."""

    def __init__(self, client: redis.Redis[bytes], send: Send, *, node: str, batch: int = 10_000) -> None:
        self._redis = client
        self._send = send
        self._node = node
        self._batch = batch

    def restarted(self) -> bool:
        """True once per Redis run (the first worker to see a new ``run_id`` claims the sweep)."""
        run_id = str(self._redis.info("server")["run_id"])
        previous = cast(bytes | None, self._redis.set(RECONCILE_RUN_ID, run_id, get=True))
        return previous is None or previous.decode() != run_id

    def present(self, queues: Iterable[str]) -> set[str]:
        """Task ids waiting in these queue lists or reserved (``unacked``)."""
        ids: set[str] = set()
        for queue in queues:
            for start in range(0, int(self._redis.llen(queue)), 1000):
                ids |= _ids_in(self._redis.lrange(queue, start, start + 999), unacked=False)
        return ids | _ids_in(self._redis.hvals(UNACKED), unacked=True)

    def sweep(self) -> int:
        """Re-send every open job that is neither finished nor on its way; return how many were re-sent."""
        if not self._redis.set(RECONCILE_LOCK, self._node, nx=True, ex=300):
            return 0
        try:
            return self._sweep()
        finally:
            self._redis.delete(RECONCILE_LOCK)

    def _sweep(self) -> int:
        ids = [raw.decode() for raw in self._redis.zrange(OPEN_JOBS, 0, self._batch - 1)]
        if not ids:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(job_key(job_id), ["message", "queue"])
            pipe.exists(terminal_guard_key(job_id))
        replies = pipe.execute()
        records = {job_id: (replies[2 * i], replies[2 * i + 1]) for i, job_id in enumerate(ids)}
        queues = {queue.decode() for (_, queue), _ in records.values() if queue}
        on_the_way = self.present(queues)
        resent = 0
        for job_id, ((message, queue), finished) in records.items():
            if finished:
                self._redis.zrem(OPEN_JOBS, job_id)
            elif job_id in on_the_way:
                continue
            elif message is None or queue is None:
                self._redis.zrem(OPEN_JOBS, job_id)
                log.error("job_record_lost", job_id=job_id)  # nothing left to re-send from (expired, or lost too)
            else:
                self._send(json.loads(message), queue.decode(), job_id)
                self._redis.hincrby(job_key(job_id), "reconciled", 1)
                resent += 1
        log.warning("reconciled_after_redis_restart", open=len(ids), resent=resent)
        return resent


class ReconcileLoop:
    """Checks for a Redis restart every ``interval_s`` from a daemon thread, sweeping once after each."""

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
                if self._reconciler.restarted():
                    # Give consumers a moment to reconnect and put back what they still hold before looking.
                    self._stop.wait(min(self._interval, 5.0))
                    self._reconciler.sweep()
            except redis.RedisError as exc:
                log.info("reconcile_skipped", error=repr(exc))  # Redis down; try again next interval

    def stop(self) -> None:
        self._stop.set()
