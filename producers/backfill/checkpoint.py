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
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field
from redis.client import Pipeline

from producers.events import last_id
from producers.rediskeys import BACKFILL_INDEX, BACKFILL_TALLY, backfill_key, backfill_lock_key
from schemas.errors import ConfigError, ErrorCode, PermanentError

BackfillState = Literal["running", "interrupted", "failed", "finished"]
BACKFILL_ID_PATTERN = r"^bf-[0-9a-f]{16}$"


def new_backfill_id() -> str:
    return f"bf-{uuid.uuid4().hex[:16]}"


class BackfillOptions(BaseModel):
    """What a backfill enqueues; fixed when it is created."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str  # s3://bucket/prefix, or the manifest URL
    mode: Literal["list", "manifest"]
    bucket: str
    prefix: str = ""
    include: list[str] = Field(default_factory=list)
    max_bytes: int | None = Field(default=None, ge=0)
    model: str
    policy_ref: str | None = None
    tenant: str = "default"
    metadata: dict[str, Any] = Field(default_factory=dict)
    queue: str
    results: str | None = None  # s3://bucket/prefix for the verdicts as JSON Lines (registered before each run)
    # Dataset mode (docs/datasets.md): what the objects under the prefix are, and how results are written.
    format: Literal["objects", "webdataset", "parquet"] = "objects"
    key_column: str = "key"
    image_column: str | None = None
    url_column: str | None = None
    results_format: Literal["jsonl", "parquet"] = "jsonl"

    @property
    def dataset(self) -> bool:
        return self.format != "objects"


@dataclass
class BackfillProgress:
    """The checkpoint and counters (everything but the options); one flat Redis hash field each."""

    state: BackfillState = "running"
    last_key: str = ""
    manifest_file: int = 0
    manifest_row: int = 0
    listed: int = 0
    enqueued: int = 0
    skipped_include: int = 0
    skipped_size: int = 0
    skipped_other: int = 0
    shards: int = 0  # dataset mode: shards whose every row was sent
    shard_key: str = ""  # dataset mode: the shard being sent, its rows sent so far and its ETag
    shard_pos: int = 0
    shard_etag: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""

    @property
    def skipped(self) -> int:
        return self.skipped_include + self.skipped_size + self.skipped_other

    def cursor_fields(self) -> dict[str | bytes, str | int | float]:
        """The fields written with every enqueued job (one HSET): position and the counters that go with it."""
        out: dict[str | bytes, str | int | float] = {
            "last_key": self.last_key,
            "manifest_file": self.manifest_file,
            "manifest_row": self.manifest_row,
            "listed": self.listed,
            "enqueued": self.enqueued,
            "skipped_include": self.skipped_include,
            "skipped_size": self.skipped_size,
            "skipped_other": self.skipped_other,
            "shards": self.shards,
            "shard_key": self.shard_key,
            "shard_pos": self.shard_pos,
            "shard_etag": self.shard_etag,
        }
        return out

    def all_fields(self) -> dict[str | bytes, str | int | float]:
        return {name: value for name, value in asdict(self).items()}  # noqa: C416 - widens the key type

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> BackfillProgress:
        out = cls()
        for f in fields(cls):
            if f.name in raw:
                current = getattr(out, f.name)
                setattr(out, f.name, type(current)(raw[f.name]) if not isinstance(current, str) else raw[f.name])
        return out


@dataclass
class BackfillRecord:
    backfill_id: str
    options: BackfillOptions
    progress: BackfillProgress
    completed: int = 0
    failed: int = 0


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
        pipe.hset(backfill_key(backfill_id), mapping={"options": options.model_dump_json(), **progress.all_fields()})
        pipe.zadd(BACKFILL_INDEX, {backfill_id: now})
        pipe.execute()
        return BackfillRecord(backfill_id, options, progress)

    def load(self, backfill_id: str) -> BackfillRecord:
        raw = _decode(self._redis.hgetall(backfill_key(backfill_id)))
        if "options" not in raw:
            raise PermanentError(f"no backfill {backfill_id!r}", code=ErrorCode.NOT_FOUND)
        return BackfillRecord(
            backfill_id,
            BackfillOptions.model_validate_json(raw["options"]),
            BackfillProgress.from_hash(raw),
            completed=int(raw.get("completed", 0)),
            failed=int(raw.get("failed", 0)),
        )

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


_REFRESH = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end
return 0
"""
_TAKEOVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return false
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
