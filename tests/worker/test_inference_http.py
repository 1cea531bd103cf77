"""The inference HTTP client: many threads share it without one pool's bookkeeping walking hundreds of connections."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tests.sglang_server import SimulatedSGLang
from worker.inference.http import SHARD_CONNECTIONS, HttpClient


def test_threads_are_spread_over_pools_of_at_most_32_and_each_keeps_its_own() -> None:
    """httpcore's pool walks every connection on every request and response: at 600 in flight (P1, C = 512) one
    shared pool cost the worker 17 ms of CPU per job, 7.6 ms spread over pools of 32."""
    client = HttpClient("http://127.0.0.1:1", timeout_s=1, connect_timeout_s=1, max_connections=1024)
    assert len(client._pools) == 1024 // SHARD_CONNECTIONS
    chosen: dict[int, list[object]] = {}
    barrier = threading.Barrier(256)

    def pick(_: int) -> None:
        barrier.wait()  # 256 distinct threads, all alive at once
        chosen[threading.get_ident()] = [client._pool() for _ in range(3)]

    with ThreadPoolExecutor(256) as pool:
        list(pool.map(pick, range(256)))
    assert all(len({id(p) for p in picks}) == 1 for picks in chosen.values())  # a thread keeps its pool
    per_pool: dict[int, int] = {}
    for picks in chosen.values():
        per_pool[id(picks[0])] = per_pool.get(id(picks[0]), 0) + 1
    assert max(per_pool.values()) <= SHARD_CONNECTIONS  # dealt round-robin: 8 threads per pool here
    client.close()


def test_a_shared_client_serves_many_threads_over_kept_alive_connections() -> None:
    sim = SimulatedSGLang(latency_s=0.05).start()
    client = HttpClient(sim.url, timeout_s=10, connect_timeout_s=5, max_connections=64)
    try:
        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(lambda _: client.get("/health").status, range(256)))
        assert statuses == [200] * 256
        with sim.lock:
            opened = len(sim.connections)
        assert opened <= 64  # one connection per thread at most, reused for its next requests
    finally:
        client.close()
        sim.stop()
