"""Malformed queue entries: what kombu would choke on is recognised and quarantined (unit tests, no services)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from worker.kombu_compat import QUARANTINE_CONTENT_TYPE, QUARANTINE_HEADER, Undecodable, envelope_problem, quarantine
from worker.malformed import malformed_job_id


def envelope(**changes: Any) -> dict[str, Any]:
    good: dict[str, Any] = {
        "body": base64.b64encode(b'[[{"job_id": "j"}], {}, {}]').decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": "j", "task": "guardq.moderate"},
        "properties": {"delivery_tag": "t1", "body_encoding": "base64", "delivery_info": {"routing_key": "q"}},
    }
    return good | changes


def test_a_well_formed_envelope_is_left_alone() -> None:
    assert envelope_problem(envelope()) is None


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (Undecodable("not json"), "the queue entry is not JSON"),
        ([1, 2, 3], "the queue entry is a JSON list, not a message envelope"),
        ("a string", "the queue entry is a JSON str, not a message envelope"),
        (envelope(properties={}), "the queue entry has no properties.delivery_tag"),
        (envelope(headers=["x"]), "the message's headers or delivery_info is not an object"),
        (envelope(body=42), "the message body is not a string"),
        (envelope(body="!!!not base64!!!"), "the message body is not valid base64"),
    ],
    ids=["not-json", "json-list", "json-string", "no-tag", "headers-list", "body-number", "bad-base64"],
)
def test_entries_kombu_cannot_take_are_named_for_what_is_wrong(message: Any, problem: str) -> None:
    assert problem == envelope_problem(message)


def test_a_quarantined_entry_carries_the_raw_text_its_task_id_and_a_content_type_nobody_accepts() -> None:
    raw = {"headers": {"id": "job-7"}, "body": 1}
    wrapped = quarantine(raw, "guardq.llavaguard-7b", "the queue entry has no properties.delivery_tag")
    assert envelope_problem(wrapped) is None
    assert QUARANTINE_CONTENT_TYPE == wrapped["content-type"]
    assert {"id": "job-7", QUARANTINE_HEADER: "the queue entry has no properties.delivery_tag"} == wrapped["headers"]
    assert raw == json.loads(base64.b64decode(wrapped["body"]))
    assert "guardq.llavaguard-7b" == wrapped["properties"]["delivery_info"]["routing_key"]


def test_a_message_without_a_task_id_gets_a_job_id_derived_from_its_bytes() -> None:
    entry = b"garbage on the queue"
    assert f"malformed-{hashlib.sha256(entry).hexdigest()[:32]}" == malformed_job_id(entry)
    assert malformed_job_id(entry) == malformed_job_id(entry.decode())
