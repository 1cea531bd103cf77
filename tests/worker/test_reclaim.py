"""Messages reserved by a dead worker go back to their queue within seconds (real Redis, kombu's own restore).

Each test uses private owners/lock/suspects keys and a private queue; reservations are made by kombu itself (a
consumer that never acknowledges, with guardq's reservation hook recording the owner), then "killed" by dropping
the connection without kombu's shutdown restore.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pytest
import redis as redis_lib
from kombu import Connection, Queue

from schemas.keys import UNACKED_OWNERS, worker_lease_key
from worker import kombu_compat
from worker.reclaim import OwnReservations, Reclaimer

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_name(redis_client: redis_lib.Redis) -> Iterator[str]:
    name = f"guardq.reclaim-test.{uuid.uuid4().hex[:8]}"
    yield name
    redis_client.delete(name)


def reserve(redis_url: str, queue: str, owner: str, count: int) -> list[str]:
    """Publish ``count`` messages and reserve them as ``owner`` without acknowledging; return their tags."""
    kombu_compat.install()
    kombu_compat.record_reservations_as(owner)
    tags: list[str] = []
    try:
        with Connection(redis_url) as conn:
            simple = conn.SimpleQueue(Queue(queue, routing_key=queue, exchange=""))
            for i in range(count):
                simple.put({"n": i})
            for _ in range(count):
                message = simple.get(timeout=5)
                tags.append(str(message.delivery_tag))
            conn.default_channel.do_restore = False  # die holding them: no restore at close, like kill -9
            conn.default_channel.qos.restore_at_shutdown = False
    finally:
        kombu_compat.record_reservations_as(None)
    return tags


def restorer(redis_url: str) -> tuple[list[str], object]:
    restored: list[str] = []

    def restore(tags: Sequence[str]) -> None:
        with Connection(redis_url) as conn:
            for tag in tags:
                conn.default_channel.qos.restore_by_tag(tag)
        restored.extend(tags)

    return restored, restore


def reclaimer(client: redis_lib.Redis, restore: object, me: str, grace_s: float = 0.5) -> Reclaimer:
    tag = uuid.uuid4().hex[:8]
    return Reclaimer(
        client, restore, incarnation=me, grace_s=grace_s,  # type: ignore[arg-type]
        lock_key=f"test:reclaim:lock:{tag}", suspects_key=f"test:reclaim:suspects:{tag}",
    )  # fmt: skip


def owned_by(client: redis_lib.Redis, owner: str) -> list[str]:
    return sorted(t.decode() for t, o in client.hgetall(UNACKED_OWNERS).items() if o.decode() == owner)


def test_a_reservation_records_its_owner_and_an_acknowledgement_removes_it(
    redis_url: str, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    owner = f"node-{uuid.uuid4().hex[:6]}@test#1-a"
    kombu_compat.install()
    kombu_compat.record_reservations_as(owner)
    try:
        with Connection(redis_url) as conn:
            simple = conn.SimpleQueue(Queue(queue_name, routing_key=queue_name, exchange=""))
            simple.put({"n": 1})
            message = simple.get(timeout=5)
            assert [str(message.delivery_tag)] == owned_by(redis_client, owner)
            message.ack()
            assert [] == owned_by(redis_client, owner)
    finally:
        kombu_compat.record_reservations_as(None)


def test_a_dead_workers_messages_go_back_once_its_lease_was_missing_for_the_grace(
    redis_url: str, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    dead = f"node-{uuid.uuid4().hex[:6]}@a#1-aa"
    tags = reserve(redis_url, queue_name, dead, 3)
    assert sorted(tags) == owned_by(redis_client, dead)
    assert 0 == redis_client.llen(queue_name)
    restored, restore = restorer(redis_url)
    sweeper = reclaimer(redis_client, restore, f"other-{uuid.uuid4().hex[:6]}@b#2-bb", grace_s=0.0)
    assert 0 == sweeper.sweep()  # first sighting: a suspect, even with no grace at all
    assert 0 == redis_client.llen(queue_name)
    assert 3 == sweeper.sweep()  # second sighting, the grace (0 s here) passed: dead
    assert sorted(tags) == sorted(restored)
    assert 3 == redis_client.llen(queue_name)  # back on the queue, ready for a live worker
    assert [] == owned_by(redis_client, dead)
    for tag in tags:
        assert not redis_client.hexists("unacked", tag)


def test_a_live_workers_messages_are_left_alone(redis_url: str, redis_client: redis_lib.Redis, queue_name: str) -> None:
    alive = f"node-{uuid.uuid4().hex[:6]}@a#1-aa"
    redis_client.set(worker_lease_key(alive), "1", ex=30)
    tags = reserve(redis_url, queue_name, alive, 2)
    restored, restore = restorer(redis_url)
    sweeper = reclaimer(redis_client, restore, f"other-{uuid.uuid4().hex[:6]}@b#2-bb", grace_s=0.0)
    try:
        assert 0 == sweeper.sweep()
        assert 0 == sweeper.sweep()
        assert [] == restored
        assert sorted(tags) == owned_by(redis_client, alive)
    finally:
        for tag in tags:
            Connection(redis_url).default_channel.qos.restore_by_tag(tag)
        redis_client.delete(worker_lease_key(alive))


def test_a_node_restarted_under_its_name_gets_its_predecessors_messages_back_at_once(
    redis_url: str, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    node = f"gpu0-{uuid.uuid4().hex[:6]}@host"
    before = f"{node}#100-aaaa"
    redis_client.set(worker_lease_key(before), "1", ex=30)  # its lease has not even expired yet (killed 1 s ago)
    tags = reserve(redis_url, queue_name, before, 2)
    restored, restore = restorer(redis_url)
    redis_client.delete(worker_lease_key(before))
    assert 2 == reclaimer(redis_client, restore, f"{node}#200-bbbb", grace_s=60).sweep()
    assert sorted(tags) == sorted(restored)
    assert 2 == redis_client.llen(queue_name)


def test_a_redis_restart_that_expired_every_lease_restores_nothing_once_leases_return(
    redis_url: str, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    """Leases vanish together (Redis was down past their TTL) and come back at the next renewal: no one is dead."""
    owner = f"node-{uuid.uuid4().hex[:6]}@a#1-aa"
    tags = reserve(redis_url, queue_name, owner, 1)
    restored, restore = restorer(redis_url)
    sweeper = reclaimer(redis_client, restore, f"other-{uuid.uuid4().hex[:6]}@b#2-bb", grace_s=30)
    try:
        assert 0 == sweeper.sweep()  # lease missing: a suspect only
        redis_client.set(worker_lease_key(owner), "1", ex=30)  # the worker renews after the restart
        assert 0 == sweeper.sweep()
        assert [] == restored
    finally:
        for tag in tags:
            Connection(redis_url).default_channel.qos.restore_by_tag(tag)
        redis_client.delete(worker_lease_key(owner))


def test_a_live_worker_gives_back_what_it_is_recorded_as_holding_but_no_longer_holds(
    redis_url: str, redis_client: redis_lib.Redis, queue_name: str
) -> None:
    """After a broker reconnect the old channel's reservations are nobody's: its own audit hands them back."""
    me = f"node-{uuid.uuid4().hex[:6]}@a#1-aa"
    running, orphaned = reserve(redis_url, queue_name, me, 2)
    restored, restore = restorer(redis_url)
    audit = OwnReservations(redis_client, restore, incarnation=me, held=lambda: {running})  # type: ignore[arg-type]
    try:
        assert 0 == audit.audit()  # unheld once: it may be between kombu and Celery's request bookkeeping
        assert 1 == audit.audit()
        assert [orphaned] == restored
        assert [running] == owned_by(redis_client, me)
    finally:
        Connection(redis_url).default_channel.qos.restore_by_tag(running)
