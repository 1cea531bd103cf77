"""What ``guardq fleet status`` shows, read from Redis only (producers never import the worker's modules).

Sources: the fleet registry (``schemas.keys.fleet_node_key``: one hash per worker node, written by the worker's
heartbeat and by the launcher), the Celery queues (Redis lists named by ``schemas.keys.queue_name``) and kombu's
``unacked`` hash (``schemas.keys.UNACKED``: messages reserved by workers and not yet acknowledged).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from schemas.keys import FLEET_NODES, UNACKED, fleet_node_key, model_queues
from schemas.models import MODELS

FORGET_AFTER_S = 3600.0  # a node silent this long is dropped from the index


@dataclass
class NodeView:
    """One worker node as the registry describes it; ``lost`` once its hash expired (no heartbeat)."""

    node: str
    last_seen: float
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def lost(self) -> bool:
        return not self.fields

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def number(self, key: str) -> float:
        try:
            return float(self.fields.get(key) or 0)
        except ValueError:
            return 0.0

    @property
    def server(self) -> str:
        """The server's health in one word: the launcher's state where it runs the server, else the worker's view."""
        if self.lost:
            return "lost"
        launched = self.get("server_state")
        worker_view = self.get("server")
        if launched and launched not in {"ready", "attached"}:
            return launched
        return worker_view or launched or "?"

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            **self.fields,
            "node": self.node,
            "lost": self.lost,
            "health": self.server,
            "age_s": round(now - self.last_seen, 1),
        }


def read_nodes(client: redis.Redis[bytes], *, now: float | None = None) -> list[NodeView]:
    """Every node in the index with its hash; forgets nodes silent for an hour."""
    now = time.time() if now is None else now
    client.zremrangebyscore(FLEET_NODES, "-inf", now - FORGET_AFTER_S)
    members = client.zrange(FLEET_NODES, 0, -1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for member, _ in members:
        pipe.hgetall(fleet_node_key(member.decode()))
    hashes = pipe.execute()
    views = []
    for (member, score), raw in zip(members, hashes, strict=True):
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        views.append(NodeView(node=member.decode(), last_seen=float(score), fields=fields))
    return sorted(views, key=lambda v: v.node)


def queue_depths(client: redis.Redis[bytes], queues: list[str] | None = None) -> dict[str, int]:
    """Waiting messages per queue (every model's interactive and bulk queue unless ``queues`` is given)."""
    names = queues if queues is not None else [q for spec in MODELS.values() for q in model_queues(spec)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))


def reserved(client: redis.Redis[bytes]) -> int:
    """Messages delivered to workers and not yet acknowledged (all queues together)."""
    return int(client.hlen(UNACKED))


def snapshot(client: redis.Redis[bytes], *, all_queues: bool = False) -> dict[str, Any]:
    """Nodes, queue depths (non-empty or consumed ones unless ``all_queues``) and fleet totals, JSON-ready."""
    now = time.time()
    nodes = read_nodes(client, now=now)
    consumed = {q for n in nodes if not n.lost for q in n.get("queues").split(",") if q}
    known = [q for spec in MODELS.values() for q in model_queues(spec)]
    depths = queue_depths(client, known + sorted(consumed - set(known)))
    shown = {q: d for q, d in depths.items() if all_queues or d > 0 or q in consumed}
    live = [n for n in nodes if not n.lost]
    return {
        "time": now,
        "nodes": [n.as_dict(now) for n in nodes],
        "queues": shown,
        "reserved": reserved(client),
        "totals": {
            "nodes": len(live),
            "servers_up": sum(1 for n in live if n.server == "up"),
            "consuming": sum(1 for n in live if n.get("consuming") == "1"),
            "unhealthy": sum(1 for n in live if n.get("fault")),
            "in_flight": int(sum(n.number("in_flight") for n in live)),
            "jobs_per_s": round(sum(n.number("jobs_per_s") for n in live), 3),
            "waiting": sum(depths.values()),
        },
    }
