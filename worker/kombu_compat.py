"""Five adjustments to kombu's Redis transport: two guards that keep one bad moment from killing a worker, client
reuse on the hot path, a record of which worker reserved each message, and a prompt refill.

1. A reconnect race on Redis restart. On a broker connection loss Celery first detaches the transport
   (``Connection.collect``) and then closes the connection; closing the channel tries to restore unacknowledged
   messages, which needs a Redis client built from the now-detached transport (``transport.client is None``) and
   raises AttributeError — not a connection error — so the consumer dies with "Unrecoverable error" (seen with
   kombu 5.7 / Celery 5.7, reproduced by tests/chaos/test_redis_restart.py). Raising a connection error instead
   lets kombu skip that restore (the visibility timeout sweep returns those messages) and Celery reconnects.

2. A poison entry in a queue list. kombu ``BRPOP``s an entry and parses it as its JSON envelope in the event loop;
   an entry that is not JSON, or JSON of another shape (no ``properties``/``delivery_tag``, an undecodable body),
   raises there and the worker exits ("Unrecoverable error") — every worker that pops it, and the entry is gone.
   Here such an entry becomes a well-formed *quarantine* envelope (the original text as its body, a content type
   no consumer accepts, the original task id when one can be read), so Celery's consumer hands it to its decode
   error path, where ``worker.malformed`` ends it with a failed ``invalid_job`` event.

3. Client reuse. kombu builds a fresh ``redis.Redis`` for every acknowledgement and reservation (see
   ``_create_client`` below); reusing one per channel and pool cut a tenth of a worker's CPU per job.

4. Reservation owners. kombu records a reserved message in its ``unacked`` hash without saying who holds it, so a
   dead worker's messages wait out the whole visibility timeout (an hour by default). Before kombu records a
   reservation, the worker's *incarnation* (``worker.liveness``) is written beside its delivery tag in
   ``guardq:unacked:owners``; every path that removes the tag from kombu's indices (ack, reject, restore) removes
   it there too, in the same pipeline. ``worker.reclaim`` hands back the messages of incarnations whose lease
   expired.

5. Prompt refill. kombu fetches (``BRPOP``) only while the channel's QoS has room, and decides that on each turn of
   the consumer's event loop; an acknowledgement made on a pool thread frees a slot without waking that loop, which
   sleeps in ``epoll`` until its next timer (up to a second). A saturated server then ran short: P1 at C = 128 saw
   the server's running batch dip after waves of completions, and each step of the in-flight ramp waited for the
   next turn. After an acknowledgement, :func:`wake_consumer` wakes the loop (kombu's own thread-safe
   ``call_soon``: one pending wake-up covers any number of calls).

Besides the patches, this module is the one place that reads kombu's own state in Redis and in the worker:

- :func:`reserved_job_ids` / :func:`still_reserved`: kombu's ``unacked`` hash (``schemas.keys.UNACKED``, its
  default ``unacked_key``; each value is ``[envelope, exchange, routing key]``), for the reconciler and reclaimer;
- :func:`restore_by_tags`: kombu's own ``restore_by_tag`` (a reserved message back to the head of its queue);
- :func:`held_delivery_tags`: the delivery tags of the task requests Celery's worker state holds.

All of it depends on private kombu internals, so kombu is bounded in pyproject.toml (``kombu>=5.7.0,<5.8``, the
same as :data:`SUPPORTED_KOMBU`: the version these were checked against) and :func:`check_internals` (run by
:func:`install` when a worker's Celery app is configured) refuses to start a worker on a kombu whose internals no
longer have the shape used here. ``producers/taskmessage.py`` builds the same list entries a producer's
``send_task`` would (it cannot import the worker); a test pins it to kombu's own output.
"""

from __future__ import annotations

import base64
import inspect
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import kombu
import orjson
import redis
from celery.worker import state as celery_state
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import Base64

from schemas.keys import UNACKED, UNACKED_OWNERS

QUARANTINE_CONTENT_TYPE = "application/x-guardq-malformed"
QUARANTINE_HEADER = "guardq-malformed"

_original_connparams = kombu_redis.Channel._connparams
_original_loads: Any = getattr(kombu_redis, "loads")  # noqa: B009 - kombu does not re-export it
_original_deliver: Any = kombu_redis.Transport._deliver


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("broker transport already detached (reconnecting)")
    return _original_connparams(self, asynchronous)  # type: ignore[no-untyped-call]


class Undecodable(dict[str, Any]):
    """What the lenient ``loads`` returns for text that is not JSON: the text itself, for the quarantine."""

    def __init__(self, text: str) -> None:
        super().__init__(_guardq_undecodable=text)
        self.text = text


def _loads(text: Any) -> Any:
    try:
        return _original_loads(text)
    except ValueError:  # JSONDecodeError: a list entry someone pushed by hand, or garbage
        return Undecodable(text if isinstance(text, str) else repr(text))


def _body_problem(message: dict[str, Any], properties: dict[str, Any]) -> str | None:
    body, encoding = message.get("body"), properties.get("body_encoding")
    if body is not None and not isinstance(body, str):
        return "the message body is not a string"
    if encoding not in (None, "utf-8", "base64"):
        return f"unknown body encoding {encoding!r}"
    if body and encoding == "base64":
        try:
            Base64().decode(body)  # type: ignore[no-untyped-call]
        except ValueError:
            return "the message body is not valid base64"
    return None


def envelope_problem(message: Any) -> str | None:
    """Why kombu/Celery could not take ``message`` as a message envelope, or None when it can."""
    if isinstance(message, Undecodable):
        return "the queue entry is not JSON"
    if not isinstance(message, dict):
        return f"the queue entry is a JSON {type(message).__name__}, not a message envelope"
    properties = message.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str | int):
        return "the queue entry has no properties.delivery_tag"
    if not isinstance(message.get("headers") or {}, dict) or not isinstance(
        properties.get("delivery_info") or {}, dict
    ):
        return "the message's headers or delivery_info is not an object"
    return _body_problem(message, properties)


def _original_id(message: Any) -> str | None:
    headers = message.get("headers") if isinstance(message, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) and 0 < len(task_id) <= 128 and task_id.isprintable() else None


def quarantine(message: Any, queue: str, problem: str) -> dict[str, Any]:
    """A well-formed envelope carrying the malformed entry verbatim, which no task consumer will decode."""
    raw = message.text if isinstance(message, Undecodable) else json.dumps(message, default=repr)
    headers: dict[str, Any] = {QUARANTINE_HEADER: problem}
    task_id = _original_id(message)
    if task_id is not None:
        headers["id"] = task_id
    return {
        "body": base64.b64encode(raw.encode("utf-8", "replace")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": QUARANTINE_CONTENT_TYPE,
        "headers": headers,
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
        },
    }


def _deliver(self: Any, message: Any, queue: Any) -> Any:
    problem = envelope_problem(message)
    if problem is not None:
        message = quarantine(message, str(queue), problem)
    return _original_deliver(self, message, queue)


_original_create_client = kombu_redis.Channel._create_client


def _create_client(self: Any, asynchronous: bool = False) -> Any:
    """Reuse one redis client per channel and pool instead of building a new one for every ack.

    kombu builds a fresh ``redis.Redis`` (and redis-py its ~200-entry response-callback table) for each
    acknowledgement and reservation; that was a tenth of a worker's CPU per job. A client is only a handle on the
    shared connection pool, safe across threads, so one per (channel, pool) does the same work. A new pool (after a
    reconnect) gets a new client.
    """
    pool = self.async_pool if asynchronous else self.pool
    clients: dict[bool, Any] = self.__dict__.setdefault("_guardq_clients", {})
    client = clients.get(asynchronous)
    if client is None or client.connection_pool is not pool:
        client = _original_create_client(self, asynchronous)  # type: ignore[no-untyped-call]
        clients[asynchronous] = client
    return client


_original_append: Any = kombu_redis.QoS.append
_original_remove_from_indices: Any = kombu_redis.QoS._remove_from_indices
_original_ack: Any = kombu_redis.QoS.ack


def _noop() -> None:
    return None


def wake_consumer() -> None:
    """Make the consumer's event loop take another turn now (from any thread): it then applies a changed prefetch
    count and fetches into free QoS slots. Nothing happens outside a worker (no event loop)."""
    hub = get_event_loop()
    if hub is not None:
        hub.call_soon(_noop)  # type: ignore[no-untyped-call]


def _ack(self: Any, delivery_tag: Any) -> Any:
    """kombu's acknowledgement, then a wake-up: the freed slot is refilled on this turn, not the next timer's."""
    result = _original_ack(self, delivery_tag)
    wake_consumer()
    return result


_owner: str | None = None


def record_reservations_as(incarnation: str | None) -> None:
    """Name this process's reservations after ``incarnation`` from now on (None: record nothing)."""
    global _owner  # noqa: PLW0603 - one reserving identity per process
    _owner = incarnation


def _append(self: Any, message: Any, delivery_tag: Any) -> Any:
    """Record the owner *before* kombu records the reservation: a kill between the two leaves an owner entry
    without a message (dropped by the next reclaim), never a reserved message without an owner."""
    owner = _owner
    if owner is not None:
        with self.channel.conn_or_acquire() as client:
            client.hset(UNACKED_OWNERS, delivery_tag, owner)
    return _original_append(self, message, delivery_tag)


def _remove_from_indices(self: Any, delivery_tag: Any, pipe: Any = None) -> Any:
    return _original_remove_from_indices(self, delivery_tag, pipe).hdel(UNACKED_OWNERS, delivery_tag)


def _task_id(envelope: Any) -> str | None:
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


def reserved_ids(values: Iterable[bytes]) -> set[str]:
    """Task ids of kombu ``unacked`` values (``[envelope, exchange, routing key]``)."""
    found: set[str] = set()
    for raw in values:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        task_id = _task_id(value[0] if isinstance(value, list) and value else value)
        if task_id is not None:
            found.add(task_id)
    return found


def reserved_job_ids(client: redis.Redis[bytes], tags: Sequence[str] | None = None) -> set[str]:
    """Task (job) ids of the messages kombu holds as reserved: all of them, or those of these delivery tags."""
    if tags is None:
        return reserved_ids(client.hvals(UNACKED))
    return reserved_ids(v for v in client.hmget(UNACKED, list(tags)) if v is not None)


def still_reserved(client: redis.Redis[bytes], tags: Sequence[str]) -> list[str]:
    """Those of ``tags`` kombu still holds as reserved (not acknowledged, rejected or restored meanwhile)."""
    pipe = client.pipeline(transaction=False)
    for tag in tags:
        pipe.hexists(UNACKED, tag)
    return [tag for tag, found in zip(tags, pipe.execute(), strict=True) if found]


def restore_by_tags(app: Any, tags: Sequence[str]) -> None:
    """Put reserved messages back at the head of their queues through kombu's own ``restore_by_tag`` (one
    WATCH/MULTI each: a message restored twice, or acknowledged meanwhile, is pushed at most once)."""
    with app.connection_for_write() as connection:
        qos = connection.default_channel.qos
        for tag in tags:
            qos.restore_by_tag(tag)


def held_delivery_tags() -> set[str]:
    """Delivery tags of the task requests this process holds: reserved, scheduled (ETA) or running."""
    for _ in range(5):
        try:
            requests = list(celery_state.requests.values()) + list(celery_state.active_requests)
        except RuntimeError:  # the consumer thread changed a set while we copied it; copy again
            continue
        return {str(r.message.delivery_tag) for r in requests if getattr(r, "message", None) is not None}
    raise RuntimeError("could not copy the worker's request sets")


SUPPORTED_KOMBU = ((5, 7), (5, 8))  # [lowest, first unsupported) major.minor; pyproject.toml says the same
_PATCHED_SIGNATURES: dict[str, tuple[Any, list[str]]] = {
    "Channel._connparams": (_original_connparams, ["self", "asynchronous"]),
    "Channel._create_client": (_original_create_client, ["self", "asynchronous"]),
    "Transport._deliver": (_original_deliver, ["self", "message", "queue"]),
    "QoS.append": (_original_append, ["self", "message", "delivery_tag"]),
    "QoS._remove_from_indices": (_original_remove_from_indices, ["self", "delivery_tag", "pipe"]),
    "QoS.restore_by_tag": (kombu_redis.QoS.restore_by_tag, ["self", "tag", "client", "leftmost"]),
    "QoS.ack": (_original_ack, ["self", "delivery_tag"]),
    "loads": (_original_loads, ["s"]),
}


def check_internals() -> None:
    """Refuse to run on a kombu whose patched internals changed shape (raise RuntimeError saying what changed)."""
    version = tuple(int(part) for part in kombu.__version__.split(".")[:2])
    problems = []
    if not SUPPORTED_KOMBU[0] <= version < SUPPORTED_KOMBU[1]:
        problems.append(f"version {kombu.__version__} is outside {SUPPORTED_KOMBU[0]}..{SUPPORTED_KOMBU[1]}")
    for name, (function, expected) in _PATCHED_SIGNATURES.items():
        try:
            params = list(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            params = []
        if params[: len(expected)] != expected:
            problems.append(f"{name}{tuple(params)} no longer takes {tuple(expected)}")
    for name in ("unacked_key", "unacked_index_key", "pool", "async_pool", "conn_or_acquire", "_do_restore_message"):
        if not hasattr(kombu_redis.Channel, name):
            problems.append(f"Channel.{name} is gone")
    if getattr(kombu_redis.Channel, "unacked_key", UNACKED) != UNACKED:
        problems.append(f"Channel.unacked_key is {kombu_redis.Channel.unacked_key!r}, not {UNACKED!r}")
    for name in ("requests", "active_requests"):
        if not hasattr(celery_state, name):
            problems.append(f"celery.worker.state.{name} is gone")
    if problems:
        raise RuntimeError(
            "worker/kombu_compat.py patches kombu's Redis transport and does not fit this kombu: " + "; ".join(problems)
        )


def install() -> None:
    """Idempotently install the five adjustments (called when a worker's Celery app is configured), after checking
    that kombu's internals are still the ones they patch."""
    check_internals()
    if kombu_redis.QoS.append is not _append:
        kombu_redis.QoS.append = _append  # type: ignore[method-assign]
    if kombu_redis.QoS.ack is not _ack:
        kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
    if kombu_redis.QoS._remove_from_indices is not _remove_from_indices:
        kombu_redis.QoS._remove_from_indices = _remove_from_indices  # type: ignore[method-assign]
    if kombu_redis.Channel._connparams is not _connparams:
        kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    if kombu_redis.Channel._create_client is not _create_client:
        kombu_redis.Channel._create_client = _create_client  # type: ignore[method-assign]
    if getattr(kombu_redis, "loads") is not _loads:  # noqa: B009
        setattr(kombu_redis, "loads", _loads)  # noqa: B010
    if kombu_redis.Transport._deliver is not _deliver:
        kombu_redis.Transport._deliver = _deliver  # type: ignore[method-assign]
