"""The fleet registry in Redis: each worker node's hash, refreshed by its heartbeat and by its launcher.

``guardq fleet status`` (``producers/fleetview.py``, which does not import the worker) reads it: the key layout is in
``schemas.keys`` (``fleet_node_key``, ``FLEET_NODES``). A node's hash expires after three missed heartbeats, so a
dead host disappears on its own; the sorted set keeps its name (scored by last beat) so status can show it as lost.
A clean stop removes both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import redis
import structlog

from schemas.keys import FLEET_NODES, fleet_node_key

log = structlog.get_logger("guardq.heartbeat")


def write_node(client: redis.Redis[bytes], node: str, fields: Mapping[str, object], *, ttl_s: float) -> None:
    """Merge ``fields`` into the node's hash, refresh its expiry and its place in the index."""
    now = time.time()
    key = fleet_node_key(node)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={k: "" if v is None else str(v) for k, v in {**fields, "ts": f"{now:.3f}"}.items()})
    pipe.expire(key, max(1, int(ttl_s)))
    pipe.zadd(FLEET_NODES, {node: now})
    pipe.execute()


def forget_node(client: redis.Redis[bytes], node: str) -> None:
    """A clean stop: the node leaves the registry (a node that vanishes without this shows as lost)."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(fleet_node_key(node))
    pipe.zrem(FLEET_NODES, node)
    pipe.execute()


class Heartbeat:
    """Writes ``snapshot()`` into the node's hash every ``interval_s`` seconds from a daemon thread."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        node: str,
        snapshot: Callable[[], Mapping[str, object]],
        *,
        interval_s: float,
    ) -> None:
        self._client = client
        self._node = node
        self._snapshot = snapshot
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="guardq-heartbeat", daemon=True)

    @property
    def ttl_s(self) -> float:
        return max(3 * self._interval, 5.0)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def beat(self, **extra: object) -> None:
        try:
            write_node(self._client, self._node, {**self._snapshot(), **extra}, ttl_s=self.ttl_s)
        except redis.RedisError as exc:
            log.warning("heartbeat_failed", error=repr(exc))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self._interval)

    def stop(self) -> None:
        """Stop beating and leave the registry."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            forget_node(self._client, self._node)
        except redis.RedisError as exc:
            log.warning("heartbeat_failed", error=repr(exc))
