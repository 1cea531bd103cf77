"""Publish a job's one terminal event to the Redis Stream, guarded so a redelivered job never adds a second.

A Lua script makes "check the guard, XADD, set the guard, record the job state, leave the open-jobs index" one
atomic step: whichever delivery of a job gets there first publishes, every later one sees the guard and publishes
nothing.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from schemas.events import STREAM_FIELD, CloudEvent
from schemas.keys import OPEN_JOBS, VERDICT_STREAM, job_key, terminal_guard_key

_PUBLISH = """
redis.call('ZREM', KEYS[4], ARGV[8])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'duplicate_deliveries', 1)
  return false
end
local sid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[5], ARGV[1])
redis.call('SET', KEYS[1], sid, 'EX', ARGV[3])
redis.call('HSET', KEYS[3], 'state', ARGV[4], 'event', ARGV[1], 'stream_id', sid, 'updated_at', ARGV[6])
redis.call('HDEL', KEYS[3], 'message')  -- kept only while the job is open (worker/reconcile.py)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[3], 'callback_url', ARGV[7]) end
redis.call('EXPIRE', KEYS[3], ARGV[3])
return sid
"""

_PUBLISH_BARE = """
redis.call('ZREM', KEYS[3], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local sid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[4], ARGV[1])
redis.call('SET', KEYS[1], sid, 'EX', ARGV[3])
return sid
"""

_REQUEUED = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[2], 'state', 'queued', 'updated_at', ARGV[1]) end
return 1
"""

_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'duplicate_deliveries', 1)
  return 0
end
redis.call('HSET', KEYS[2], 'state', 'running', 'attempts', ARGV[1], 'updated_at', ARGV[2], 'worker', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'deliveries', 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


class Publisher:
    """Writes terminal events and job state; one instance (one Redis pool) per worker process."""

    def __init__(
        self, client: redis.Redis[bytes], *, stream_maxlen: int, job_ttl_s: int, stream: str = VERDICT_STREAM
    ) -> None:
        self._redis = client
        self._stream = stream
        self._maxlen = stream_maxlen
        self._ttl = job_ttl_s
        self._publish = client.register_script(_PUBLISH)
        self._publish_bare = client.register_script(_PUBLISH_BARE)
        self._requeued = client.register_script(_REQUEUED)
        self._begin = client.register_script(_BEGIN)

    def begin(self, job_id: str, attempt: int, worker: str) -> bool:
        """Record that ``attempt`` started, in one round trip; False (and the delivery counted as a duplicate in
        ``duplicate_deliveries``) when the job already has its terminal event."""
        keys = [terminal_guard_key(job_id), job_key(job_id)]
        return bool(self._begin(keys=keys, args=[attempt, time.time(), worker, self._ttl]))

    def is_terminal(self, job_id: str) -> bool:
        return bool(self._redis.exists(terminal_guard_key(job_id)))

    def publish(self, event: CloudEvent, *, callback_url: str | None = None) -> str | None:
        """XADD the event unless the job already has a terminal event; return the stream id or None.

        ``callback_url`` (the job's) is recorded in the job hash in the same atomic step, where the webhook
        dispatcher finds it when it fans the event out: no window in which the event exists without it.
        """
        job_id = event.data.job_id
        state = "completed" if event.completed else "failed"
        keys = [terminal_guard_key(job_id), self._stream, job_key(job_id), OPEN_JOBS]
        args: list[Any] = [
            event.to_json(),
            self._maxlen,
            self._ttl,
            state,
            STREAM_FIELD,
            time.time(),
            callback_url or "",
            job_id,
        ]
        sid = self._publish(keys=keys, args=args)
        return sid.decode() if isinstance(sid, bytes) else sid

    def publish_bare(self, event: CloudEvent) -> str | None:
        """Publish guarded by the terminal guard alone, without touching the job hash: for a job whose hash Redis
        refuses to update (``WRONGTYPE``: someone wrote another type under its key), so it still ends in one event."""
        job_id = event.data.job_id
        keys = [terminal_guard_key(job_id), self._stream, OPEN_JOBS]
        sid = self._publish_bare(keys=keys, args=[event.to_json(), self._maxlen, self._ttl, STREAM_FIELD, job_id])
        return sid.decode() if isinstance(sid, bytes) else sid

    def requeued(self, job_id: str) -> None:
        """The attempt handed its job back to the queue untouched: its state reads ``queued`` again."""
        self._requeued(keys=[terminal_guard_key(job_id), job_key(job_id)], args=[time.time()])
