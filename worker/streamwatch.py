"""Redis memory, key count and the verdict stream's consumer groups, for the dashboard and for warnings.

The verdict stream is trimmed by length (``GUARDQ_STREAM_MAXLEN``) and by age (``GUARDQ_STREAM_MAX_AGE_S``); a
consumer group that has not read an entry by then never will (Redis 7.0 trims pending entries too). Every worker
exports at scrape time (:class:`RedisStateCollector`):

- ``guardq_redis_used_memory_bytes``, ``guardq_redis_maxmemory_bytes``, ``guardq_redis_keys`` (``INFO``, ``DBSIZE``);
- ``guardq_stream_length`` and, per group, ``guardq_stream_group_lag`` (entries not yet delivered to it) and
  ``guardq_stream_group_behind_trim`` (1 when entries were trimmed before the group read them).

and the reconciling worker logs ``stream_group_behind_trim`` / ``stream_group_near_trim`` (:func:`warn_lagging`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis
import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas.keys import VERDICT_STREAM

log = structlog.get_logger("guardq.streamwatch")
STATE_METRIC_NAMES = (
    "guardq_redis_used_memory_bytes",
    "guardq_redis_maxmemory_bytes",
    "guardq_redis_keys",
    "guardq_stream_length",
    "guardq_stream_group_lag",
    "guardq_stream_group_behind_trim",
)


def _ms(stream_id: bytes | str | None) -> int | None:
    if stream_id is None:
        return None
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.split("-", 1)[0])


def _order(stream_id: bytes | str) -> tuple[int, int]:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class GroupState:
    name: str
    last_delivered: str
    lag: int | None  # entries the group has not been delivered yet (None: Redis cannot tell, e.g. after a trim)
    pending: int
    behind_trim: bool  # entries were trimmed before the group got them


def stream_groups(client: redis.Redis[bytes], stream: str = VERDICT_STREAM) -> tuple[int, list[GroupState]]:
    """The stream's length and each group's position relative to the oldest entry still held."""
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:  # no such stream yet
        return 0, []
    first = info.get("first-entry")
    removed = int(info.get("entries-added", 0)) - int(info.get("length", 0))  # trimmed (or deleted) so far
    out = []
    for group in client.xinfo_groups(stream):  # type: ignore[no-untyped-call]
        last = group.get("last-delivered-id", b"0-0")
        lag = group.get("lag")
        read = group.get("entries-read")
        # Not yet past the oldest entry still held, and fewer entries read than have been removed: it lost some.
        behind = first is not None and _order(last) < _order(first[0]) and int(read or 0) < removed
        name = group.get("name", b"?")
        out.append(
            GroupState(
                name=name.decode() if isinstance(name, bytes) else str(name),
                last_delivered=last.decode() if isinstance(last, bytes) else str(last),
                lag=int(lag) if lag is not None else None,
                pending=int(group.get("pending", 0)),
                behind_trim=bool(behind),
            )
        )
    return int(info.get("length", 0)), out


def warn_lagging(client: redis.Redis[bytes], *, max_age_s: int, stream: str = VERDICT_STREAM) -> list[GroupState]:
    """Log groups that lost entries to trimming, or whose position is within a fifth of the age limit of it."""
    _, groups = stream_groups(client, stream)
    now_ms = int(time.time() * 1000)
    flagged = []
    for group in groups:
        age_s = (now_ms - (_ms(group.last_delivered) or now_ms)) / 1000
        if group.behind_trim:
            log.error("stream_group_behind_trim", group=group.name, last_delivered=group.last_delivered)
            flagged.append(group)
        elif max_age_s and group.lag and age_s > 0.8 * max_age_s:
            log.warning("stream_group_near_trim", group=group.name, lag=group.lag, position_age_s=round(age_s))
            flagged.append(group)
    return flagged


class RedisStateCollector(Collector):
    """Read at scrape time; a Redis error yields no samples rather than a failed scrape."""

    def __init__(self, client: redis.Redis[bytes], stream: str = VERDICT_STREAM) -> None:
        self._redis = client
        self._stream = stream

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            memory = self._redis.info("memory")
            keys = int(self._redis.dbsize())
            length, groups = stream_groups(self._redis, self._stream)
        except redis.RedisError:
            return
        yield GaugeMetricFamily("guardq_redis_used_memory_bytes", "Redis used_memory", value=memory["used_memory"])
        yield GaugeMetricFamily(
            "guardq_redis_maxmemory_bytes", "Redis maxmemory (0: unlimited)", value=memory.get("maxmemory", 0)
        )
        yield GaugeMetricFamily("guardq_redis_keys", "Keys in the Redis database", value=keys)
        yield GaugeMetricFamily("guardq_stream_length", "Entries in the verdict stream", value=length)
        lag = GaugeMetricFamily("guardq_stream_group_lag", "Entries not yet delivered to a group", labels=["group"])
        behind = GaugeMetricFamily(
            "guardq_stream_group_behind_trim", "1 when entries were trimmed before the group read them", labels=["group"]
        )
        for group in groups:
            if group.lag is not None:
                lag.add_metric([group.name], group.lag)
            behind.add_metric([group.name], 1 if group.behind_trim else 0)
        yield lag
        yield behind
