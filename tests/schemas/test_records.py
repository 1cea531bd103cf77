"""The typed Redis records: one declaration of each hash's field names, and the Lua scripts keep to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.records import (
    JOB_FINISHED_FIELDS,
    DeliveryField,
    DeliveryRecord,
    JobField,
    JobRecord,
)
from schemas.webhooks import Delivery, DeliveryTarget

ROOT = Path(__file__).resolve().parents[2]
# Scripts that change a job's hash, and one delivery's hash (besides the values they write).
JOB_SCRIPTS = ["worker/publish_finished.lua", "worker/publish_terminal.lua", "worker/publish_begin.lua",
               "worker/publish_requeue.lua", "worker/delivery/results/sink_claim.lua"]  # fmt: skip
DELIVERY_SCRIPTS = ["worker/delivery/webhooks/deliveries_create.lua", "worker/delivery/webhooks/deliveries_claim.lua",
                    "worker/delivery/webhooks/deliveries_settle.lua"]  # fmt: skip
JOB_STATES = {"completed", "failed", "running"}
DELIVERY_STATES = {"pending", "dead"}
# A dead letter's fields on guardq:webhooks.dlq (a stream entry, not the hash).
DEAD_LETTER_FIELDS = {"delivery_id", "reason", "attempts", "last_status", "failed_at", "record", "event"}


def _names(path: str) -> set[str]:
    """Every quoted lower-case word of a script: the field names (and the state values) it writes or reads."""
    code = "\n".join(line for line in (ROOT / path).read_text().splitlines() if not line.lstrip().startswith("--"))
    return set(re.findall(r"'([a-z_]+)'", code))


@pytest.mark.parametrize("script", JOB_SCRIPTS)
def test_a_job_script_names_only_declared_job_fields(script: str) -> None:
    assert set() == _names(script) - {f.value for f in JobField} - JOB_STATES


@pytest.mark.parametrize("script", DELIVERY_SCRIPTS)
def test_a_delivery_script_names_only_declared_delivery_fields(script: str) -> None:
    assert set() == _names(script) - {f.value for f in DeliveryField} - DELIVERY_STATES - DEAD_LETTER_FIELDS


def test_the_publish_step_keeps_exactly_the_declared_finished_fields() -> None:
    code = (ROOT / "worker/publish_terminal.lua").read_text()
    kept = re.search(r"local names = \{(.*?)\}", code, re.S)
    assert kept is not None
    written = set(re.findall(r"'([a-z_]+)'", kept.group(1))) | {"state", "stream_id", "callback_url"}
    assert {f.value for f in JOB_FINISHED_FIELDS} == written


def test_each_typed_record_has_one_attribute_per_declared_field() -> None:
    assert {f.value for f in JobField} == set(JobRecord.model_fields)
    assert {f.value for f in DeliveryField} == set(DeliveryRecord.model_fields)


def test_a_job_record_reads_a_redis_reply_into_typed_values() -> None:
    raw = {b"state": b"completed", b"stream_id": b"1700000000123-0", b"attempts": b"2", b"tenant": b"t", b"new": b"x"}
    record = JobRecord.from_hash(raw)
    assert (True, 2, 1700000000.123, "t") == (record.finished, record.attempts, record.finished_at, record.tenant)
    assert "queued" == JobRecord.from_hash({}).state


def test_a_delivery_record_reads_an_attempts_fields_and_keeps_the_body_as_bytes() -> None:
    delivery = Delivery.of(
        event_id="e1", event_type="guardq.moderation.completed", tenant="t",
        target=DeliveryTarget(kind="callback", url="https://example.com/hook"),
    )  # fmt: skip
    raw = {b"record": delivery.model_dump_json().encode(), b"body": b"\xff{}", b"attempts": b"3", b"lease": None}
    record = DeliveryRecord.from_hash(raw)
    assert record is not None and (b"\xff{}", 3, "", delivery) == (
        record.body, record.attempts, record.lease, record.delivery()
    )  # fmt: skip
    assert DeliveryRecord.from_hash({b"body": b"x"}) is None  # no record: gone
