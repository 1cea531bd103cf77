"""``guardq fleet status`` reads the registry the workers and launchers write, plus queue depths, from Redis."""

from __future__ import annotations

import time
import uuid

import pytest
import redis as redis_lib

from producers.fleetview import FORGET_AFTER_S, snapshot
from schemas.keys import FLEET_NODES, fleet_node_key
from worker.heartbeat import forget_node, write_node

pytestmark = pytest.mark.integration


def test_status_merges_worker_and_launcher_fields_and_flags_silent_nodes_as_lost(
    redis_client: redis_lib.Redis,
) -> None:
    tag = uuid.uuid4().hex[:8]
    up, down, lost, ancient = (f"{name}-{tag}@host" for name in ("gpu0", "gpu1", "gpu2", "gpu3"))
    write_node(redis_client, up, {"server": "up", "consuming": 1, "in_flight": 3, "jobs_per_s": 2.5}, ttl_s=30)
    write_node(
        redis_client, up, {"server_state": "ready", "gpu": "0", "queues": "guardq.t-a,guardq.t-a.bulk"}, ttl_s=30
    )
    write_node(redis_client, down, {"server": "down", "consuming": 0, "server_state": "down"}, ttl_s=30)
    redis_client.zadd(FLEET_NODES, {lost: time.time() - 60, ancient: time.time() - FORGET_AFTER_S - 5})
    redis_client.rpush("guardq.t-a.bulk", "m1", "m2")
    try:
        data = snapshot(redis_client)
    finally:
        redis_client.delete("guardq.t-a.bulk")
        for node in (up, down, lost):
            forget_node(redis_client, node)
    nodes = {n["node"]: n for n in data["nodes"]}
    assert ("up", "3", "ready", "0") == (
        nodes[up]["health"],
        nodes[up]["in_flight"],
        nodes[up]["server_state"],
        nodes[up]["gpu"],
    )
    assert ("down", "0") == (nodes[down]["health"], nodes[down]["consuming"])
    assert (True, "lost") == (nodes[lost]["lost"], nodes[lost]["health"])
    assert ancient not in nodes  # silent for over an hour: forgotten
    assert 2 == data["queues"]["guardq.t-a.bulk"]
    assert 0 == data["queues"]["guardq.t-a"]  # consumed by a live node: shown even when empty
    assert data["totals"]["in_flight"] >= 3


def test_a_clean_stop_removes_the_node_and_its_hash(redis_client: redis_lib.Redis) -> None:
    node = f"gpu0-{uuid.uuid4().hex[:8]}@host"
    write_node(redis_client, node, {"server": "up"}, ttl_s=30)
    forget_node(redis_client, node)
    assert (None, 0) == (redis_client.zscore(FLEET_NODES, node), redis_client.exists(fleet_node_key(node)))
