"""The reference consumer-group reader (worker/delivery/stream/consumer.py) against a real Redis: sharing, reclaiming, DLQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from schemas.keys import VERDICT_STREAM
from tests.services.procs import ROOT
from tests.worker.delivery.factory import make_event, publish
from worker.delivery.stream.consumer import Entry, StreamConsumer

pytestmark = pytest.mark.integration


def fresh_stream(client: redis.Redis, n: int) -> tuple[str, list[str]]:
    stream = f"test:verdicts:{uuid.uuid4().hex}"
    ids = [publish(client, make_event(), stream) for _ in range(n)]
    return stream, ids


def consumer(client: redis.Redis, stream: str, name: str, **kw: object) -> StreamConsumer:
    kw.setdefault("start_id", "0")
    kw.setdefault("block_ms", 50)
    return StreamConsumer(client, group="g", consumer=name, stream=stream, dlq=f"{stream}.dlq", **kw)  # type: ignore[arg-type]


def test_two_consumers_in_one_group_each_get_distinct_entries(redis_client: redis.Redis) -> None:
    stream, ids = fresh_stream(redis_client, 60)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    gate = threading.Barrier(2)

    def work(name: str) -> None:
        reader = consumer(redis_client, stream, name, batch=5)
        reader.ensure_group()
        gate.wait(5)
        reader.run(
            lambda e: seen[name].append(e.id),
            should_stop=lambda: len(seen["a"]) + len(seen["b"]) >= 60,
            deadline=time.monotonic() + 15,
        )

    threads = [threading.Thread(target=work, args=(n,)) for n in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert set() == set(seen["a"]) & set(seen["b"])
    assert sorted(ids) == sorted(seen["a"] + seen["b"])
    assert seen["a"] and seen["b"]
    assert 0 == redis_client.xpending(stream, "g")["pending"]


_READ_AND_HANG = """
import sys, threading, redis
from worker.delivery.stream.consumer import StreamConsumer
reader = StreamConsumer(redis.Redis.from_url(sys.argv[1]), group="g", consumer="doomed", stream=sys.argv[2],
                        start_id="0", batch=int(sys.argv[3]))
print(len(reader.read(block_ms=1000)), flush=True)
threading.Event().wait(60)
"""


def test_a_killed_consumers_entries_are_reclaimed_by_another_consumer(
    redis_client: redis.Redis, redis_url: str
) -> None:
    stream, ids = fresh_stream(redis_client, 5)
    proc = subprocess.Popen(
        [sys.executable, "-c", _READ_AND_HANG, redis_url, stream, "5"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert b"5" == proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    pending = redis_client.xpending(stream, "g")
    assert 5 == pending["pending"]
    assert [{"name": b"doomed", "pending": 5}] == pending["consumers"]

    survivor = consumer(redis_client, stream, "survivor", min_idle_ms=100)
    got: list[Entry] = []
    survivor.run(got.append, max_entries=5, deadline=time.monotonic() + 10)
    assert sorted(ids) == sorted(e.id for e in got)
    assert all(e.deliveries == 2 for e in got)
    assert 0 == redis_client.xpending(stream, "g")["pending"]


def test_a_restarted_consumer_reads_its_own_pending_entries_before_new_ones(redis_client: redis.Redis) -> None:
    stream, ids = fresh_stream(redis_client, 3)
    first = consumer(redis_client, stream, "c1")
    assert ids == [e.id for e in first.read()]  # read, never acked: the "crash"
    newer = publish(redis_client, make_event(), stream)

    restarted = consumer(redis_client, stream, "c1")
    assert ids == [e.id for e in restarted.read()]
    assert [newer] == [e.id for e in restarted.read()]


def test_an_entry_that_keeps_failing_goes_to_the_dead_letter_stream_with_its_reason(redis_client: redis.Redis) -> None:
    stream, ids = fresh_stream(redis_client, 1)
    reader = consumer(redis_client, stream, "c1", min_idle_ms=20, max_deliveries=3)

    def always_fails(entry: Entry) -> None:
        raise RuntimeError("handler bug")

    deadline = time.monotonic() + 10
    while reader.dead_lettered == 0 and time.monotonic() < deadline:  # each round: fail, wait to be reclaimed
        reader.run(always_fails, deadline=time.monotonic() + 0.2)
    dead = redis_client.xrange(f"{stream}.dlq")
    assert 1 == len(dead)
    fields = dead[0][1]
    assert ids[0].encode() == fields[b"original_id"]
    assert b"delivered 4 times without an ack" == fields[b"reason"]
    assert 0 == redis_client.xpending(stream, "g")["pending"]


def test_an_entry_that_is_not_an_event_is_dead_lettered_at_once(redis_client: redis.Redis) -> None:
    stream = f"test:verdicts:{uuid.uuid4().hex}"
    redis_client.xadd(stream, {"event": b"{not json"})
    reader = consumer(redis_client, stream, "c1")
    assert [] == reader.read()
    assert b"entry is not a valid guardq CloudEvent" == redis_client.xrange(f"{stream}.dlq")[0][1][b"reason"]


def test_a_pending_entry_trimmed_from_the_stream_is_acked_and_counted_as_lost(redis_client: redis.Redis) -> None:
    stream, _ = fresh_stream(redis_client, 2)
    consumer(redis_client, stream, "c1").read()
    redis_client.xtrim(stream, maxlen=0)
    later = consumer(redis_client, stream, "c2", min_idle_ms=0)
    assert [] == later.read()
    assert 2 == later.lost
    assert 0 == redis_client.xpending(stream, "g")["pending"]


def guardq(*args: str, env: dict[str, str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "guardq"
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def test_events_tail_with_a_group_prints_each_event_once_and_acks_it(
    redis_client: redis.Redis, worker_env: dict[str, str]
) -> None:
    group = f"tail-{uuid.uuid4().hex[:8]}"
    redis_client.xgroup_create(VERDICT_STREAM, group, id="$", mkstream=True)
    events = [make_event(tenant="tailtest") for _ in range(3)]
    for event in events:
        publish(redis_client, event)
    done = guardq(
        "events", "tail", "--group", group, "--consumer", "c1", "--count", "3", "--timeout", "10", env=worker_env
    )
    assert 0 == done.returncode, done.stderr
    printed = [json.loads(line)["id"] for line in done.stdout.splitlines()]
    assert [e.id for e in events] == printed
    assert 0 == redis_client.xpending(VERDICT_STREAM, group)["pending"]


def test_events_tail_refuses_a_group_without_a_consumer_name_in_one_line(worker_env: dict[str, str]) -> None:
    done = guardq("events", "tail", "--group", "g", env=worker_env)
    assert 0 != done.returncode
    assert ["guardq: --group and --consumer go together"] == done.stderr.strip().splitlines()
