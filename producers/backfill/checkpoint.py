"""A backfill's durable record in Redis: its options, its checkpoint, its counters, and the lease of its runner.

One hash per backfill (``guardq:backfill:<id>``): field ``options`` holds the options as JSON (fixed at creation,
so ``--resume`` continues with exactly the same filters, model, policy and queue); the other fields are the
checkpoint (``last_key`` for a listing, ``manifest_file``/``manifest_row`` for an inventory; for a dataset the last
finished shard in ``last_key`` and the current one's ``shard_key``/``shard_pos``/``shard_etag``) and the counters.
``completed``/``failed`` are added by the verdict tally (:mod:`producers.backfill.tally`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import redis
from redis.client import Pipeline

from producers.rediskeys import BACKFILL_INDEX, BACKFILL_TALLY, backfill_lock_key
from schemas.backfill import OPTIONS_FIELD, BackfillOptions, BackfillProgress, BackfillRecord
from schemas.errors import ConfigError
from schemas.keys import backfill_key
from worker.delivery import last_id

BACKFILL_ID_PATTERN = r"^bf-[0-9a-f]{16}$"


def new_backfill_id() -> str:
    return f"bf-{uuid.uuid4().hex[:16]}"


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class BackfillStore:
    """Creates, loads and checkpoints backfill records."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._redis = client

    def create(self, options: BackfillOptions, backfill_id: str | None = None) -> BackfillRecord:
        backfill_id = backfill_id or new_backfill_id()
        now = time.time()
        progress = BackfillProgress(created_at=now, updated_at=now)
        pipe = self._redis.pipeline()
        # Tally verdicts from here on: the first backfill ever sets the tally cursor to the stream's end.
        pipe.hsetnx(BACKFILL_TALLY, "cursor", last_id(self._redis))
        mapping = {OPTIONS_FIELD: options.model_dump_json(), **progress.all_fields()}
        pipe.hset(backfill_key(backfill_id), mapping=mapping)
        pipe.zadd(BACKFILL_INDEX, {backfill_id: now})
        pipe.execute()
        return BackfillRecord(backfill_id, options, progress)

    def load(self, backfill_id: str) -> BackfillRecord:
        return BackfillRecord.from_hash(backfill_id, _decode(self._redis.hgetall(backfill_key(backfill_id))))

    def save_cursor(self, record: BackfillRecord, pipe: Pipeline[bytes]) -> None:
        """Where to resume and how many were sent: only ever written in the transaction of the jobs it covers."""
        record.progress.updated_at = time.time()
        mapping = {**record.progress.cursor_fields(), "updated_at": record.progress.updated_at}
        pipe.hset(backfill_key(record.backfill_id), mapping=mapping)

    def save_state(self, record: BackfillRecord) -> None:
        """At the end of a run: its state, error and times (never the cursor, which the job batches own)."""
        progress = record.progress
        progress.updated_at = time.time()
        mapping: dict[str | bytes, str | float] = {
            "state": progress.state,
            "error": progress.error,
            "finished_at": progress.finished_at,
            "updated_at": progress.updated_at,
        }
        self._redis.hset(backfill_key(record.backfill_id), mapping=mapping)

    def recent(self, count: int = 20) -> list[str]:
        return [b.decode() for b in self._redis.zrevrange(BACKFILL_INDEX, 0, count - 1)]




def _lua(name: str) -> str:
    return Path(__file__).with_name(f"checkpoint_lease_{name}.lua").read_text()


_REFRESH, _TAKEOVER, _RELEASE = _lua("refresh"), _lua("takeover"), _lua("release")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLease:
    """Only one process runs a backfill at a time: a Redis key ``host:pid:token`` with a TTL, refreshed while
    it runs. A lease left by a dead process on this host is taken over at once; one held elsewhere expires
    after ``GUARDQ_BACKFILL_LOCK_TTL_S``.
    """

    def __init__(self, client: redis.Redis[bytes], backfill_id: str, ttl_s: int) -> None:
        self._redis = client
        self._key = backfill_lock_key(backfill_id)
        self.ttl_s = self._ttl = ttl_s
        self._host = socket.gethostname()
        self.value = f"{self._host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._takeover = client.register_script(_TAKEOVER)

    def acquire(self) -> None:
        if self._redis.set(self._key, self.value, nx=True, ex=self._ttl):
            return
        holder = (self._redis.get(self._key) or b"").decode()
        host, _, rest = holder.partition(":")
        pid = rest.split(":", 1)[0]
        # A runner on this machine that died (SIGKILL, crash) left a stale lease: take it over atomically.
        stale = host == self._host and pid.isdigit() and not _pid_alive(int(pid))
        if stale and self._takeover(keys=[self._key], args=[holder, self.value, self._ttl]):
            return
        ttl = self._redis.ttl(self._key)
        raise ConfigError(f"backfill is already running in {holder or 'another process'} (lease expires in {ttl}s)")

    def refresh(self) -> None:
        """Extend the lease (re-take it if it lapsed); raise if another process took it meanwhile."""
        if not self._refresh(keys=[self._key], args=[self.value, self._ttl]):
            raise ConfigError(f"lost the run lease to {self.held_by()}: another process runs this backfill now")

    def release(self) -> None:
        self._release(keys=[self._key], args=[self.value])

    def held_by(self) -> str | None:
        holder = self._redis.get(self._key)
        return holder.decode() if holder else None
