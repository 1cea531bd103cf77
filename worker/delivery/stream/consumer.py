"""A reference consumer-group reader for the verdict stream: copy it, or use it as it is.

Delivery contract of ``guardq:verdicts``: **at-least-once**. An entry stays in the group's pending entries list
(PEL) until the consumer acknowledges it, so a consumer that dies mid-way gets it again (itself, from its own PEL
after a restart; or another consumer of the group, through ``XAUTOCLAIM`` once it has been idle ``min_idle_ms``).
The same event can therefore arrive twice: **dedupe on the CloudEvent ``id``** (stable per job).

Reading order per :meth:`StreamConsumer.read`: first this consumer's own PEL (id ``0``: what it read before a crash
and never acked), then, at most every ``min_idle_ms / 2``, stale entries of dead consumers (``XAUTOCLAIM``), then
new entries (``>``). An entry delivered more than ``max_deliveries`` times without an ack is a poison entry: it is
copied to the dead-letter stream (``guardq:verdicts.dlq``) with the reason, then acked. Entries trimmed from the
stream (``MAXLEN ~``) while still pending are acked and reported as lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import structlog
from pydantic import ValidationError

from schemas.events import STREAM_FIELD, CloudEvent
from schemas.keys import VERDICT_STREAM
from worker.delivery.keys import VERDICT_DLQ_STREAM

log = structlog.get_logger("guardq.consumer")


@dataclass(frozen=True)
class Entry:
    """One stream entry as delivered to this consumer; ``event`` is None when the entry is not a valid event."""

    id: str
    raw: bytes
    event: CloudEvent | None
    deliveries: int = 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamConsumer:
    """One named consumer in one consumer group of a stream (one Redis connection pool, one thread)."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        group: str,
        consumer: str,
        stream: str = VERDICT_STREAM,
        dlq: str = VERDICT_DLQ_STREAM,
        start_id: str = "$",
        min_idle_ms: int = 60_000,
        max_deliveries: int = 5,
        batch: int = 100,
        block_ms: int = 1000,
        dlq_maxlen: int = 100_000,
    ) -> None:
        self.redis = client
        self.group = group
        self.consumer = consumer
        self.stream = stream
        self.dlq = dlq
        self.start_id = start_id
        self.min_idle_ms = min_idle_ms
        self.max_deliveries = max_deliveries
        self.batch = batch
        self.block_ms = block_ms
        self.dlq_maxlen = dlq_maxlen
        self._ready = False
        self._own_cursor: str | None = "0-0"  # None once this consumer's own PEL has been drained
        self._claim_cursor = "0-0"
        self._next_reclaim = 0.0
        self.lost = 0  # pending entries that were trimmed from the stream before anyone acked them
        self.dead_lettered = 0

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; new groups start at ``start_id`` (``$``: new entries)."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready = True

    def read(self, block_ms: int | None = None) -> list[Entry]:
        """The next batch for this consumer: own PEL, then reclaimed stale entries, then new ones (may be empty)."""
        if not self._ready:
            self.ensure_group()
        entries = self._read_own_pel() if self._own_cursor is not None else []
        if not entries and time.monotonic() >= self._next_reclaim:
            entries = self._reclaim()
            self._next_reclaim = time.monotonic() + max(0.05, self.min_idle_ms / 2000)
        if not entries:
            wait = self.block_ms if block_ms is None else block_ms
            reply = self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=wait or None
            )
            fresh = [self._entry(i, f, 1) for _, items in reply or [] for i, f in items]
            entries = [e for e in fresh if e is not None]
        return self._screen(entries)

    def ack(self, *ids: str) -> int:
        """Acknowledge processed entries: they leave the group's PEL for good."""
        return int(self.redis.xack(self.stream, self.group, *ids)) if ids else 0  # type: ignore[no-untyped-call]

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Copy ``entry`` to the dead-letter stream with ``reason``, then ack it (one transaction)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(
            self.dlq,
            {
                STREAM_FIELD: entry.raw,
                "original_id": entry.id,
                "stream": self.stream,
                "group": self.group,
                "consumer": self.consumer,
                "deliveries": entry.deliveries,
                "reason": reason[:500],
                "failed_at": datetime.now(UTC).isoformat(),
            },
            maxlen=self.dlq_maxlen,
            approximate=True,
        )
        pipe.xack(self.stream, self.group, entry.id)
        pipe.execute()
        self.dead_lettered += 1
        log.warning("entry_dead_lettered", entry_id=entry.id, reason=reason, deliveries=entry.deliveries)

    def run(
        self,
        handler: Callable[[Entry], None],
        *,
        max_entries: int | None = None,
        deadline: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> int:
        """Call ``handler`` for each entry and ack it once the handler returned; return how many were handled.

        Stops after ``max_entries``, at ``deadline`` (monotonic) or once ``should_stop()`` is true; entries read but
        not yet handled then stay in this consumer's PEL and come first on its next run.

        A handler that raises leaves its entry pending: it comes back after ``min_idle_ms`` (to this or another
        consumer) and goes to the dead-letter stream after ``max_deliveries`` deliveries.
        """
        handled = 0
        while not should_stop() and (deadline is None or time.monotonic() < deadline):
            wait = self.block_ms
            if deadline is not None:
                wait = max(1, min(wait, int((deadline - time.monotonic()) * 1000)))
            for entry in self.read(block_ms=wait):
                try:
                    handler(entry)
                except Exception:
                    log.exception("handler_failed", entry_id=entry.id, deliveries=entry.deliveries)
                    continue
                self.ack(entry.id)
                handled += 1
                if (max_entries is not None and handled >= max_entries) or should_stop():
                    return handled
        return handled

    # --- internals ------------------------------------------------------------------------------------------
    def _entry(self, entry_id: bytes | str, fields: dict[bytes, bytes] | None, deliveries: int) -> Entry | None:
        sid = _text(entry_id)
        if not fields:  # trimmed from the stream while pending: nothing left to deliver
            self.ack(sid)
            self.lost += 1
            log.warning("pending_entry_trimmed", entry_id=sid)
            return None
        raw = fields.get(STREAM_FIELD.encode(), b"")
        try:
            event: CloudEvent | None = CloudEvent.model_validate_json(raw)
        except ValidationError:
            event = None
        return Entry(sid, raw, event, deliveries)

    def _read_own_pel(self) -> list[Entry]:
        reply = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: self._own_cursor or "0-0"}, count=self.batch
        )
        items = [item for _, batch in reply or [] for item in batch]
        if not items:
            self._own_cursor = None
            return []
        self._own_cursor = _text(items[-1][0])
        return self._with_counts(items)

    def _reclaim(self) -> list[Entry]:
        reply = self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.min_idle_ms, start_id=self._claim_cursor, count=self.batch
        )
        self._claim_cursor = _text(reply[0])
        if len(reply) > 2 and reply[2]:
            self.lost += len(reply[2])  # Redis 7 drops trimmed ids from the PEL and reports them here
            log.warning("pending_entries_trimmed", count=len(reply[2]))
        if reply[1]:
            log.info("entries_reclaimed", count=len(reply[1]))
        return self._with_counts(reply[1])

    def _with_counts(self, items: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Entry]:
        if not items:
            return []
        pending = self.redis.xpending_range(
            self.stream,
            self.group,
            min=_text(items[0][0]),
            max=_text(items[-1][0]),
            count=len(items) * 4,
            consumername=self.consumer,
        )
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        entries = [self._entry(i, f, counts.get(_text(i), 1)) for i, f in items]
        return [e for e in entries if e is not None]

    def _screen(self, entries: list[Entry]) -> list[Entry]:
        out = []
        for entry in entries:
            if entry.event is None:
                self.dead_letter(entry, "entry is not a valid guardq CloudEvent")
            elif entry.deliveries > self.max_deliveries:
                self.dead_letter(entry, f"delivered {entry.deliveries} times without an ack")
            else:
                out.append(entry)
        return out
