"""Backfill pieces that need no services: URL parsing, filters, deterministic job ids, the backpressure gate,
inventory rows and the verdict tally's event parsing."""

from __future__ import annotations

import threading
import time

import pytest

from producers.backfill.manifest import _entry
from producers.backfill.runner import backfill_job_id
from producers.backfill.sources import SKIP_INCLUDE, SKIP_OTHER, SKIP_SIZE, ObjectEntry, skip_reason
from producers.backfill.tally import _backfill_event
from producers.backfill.throttle import Backpressure, Stopped
from schemas.errors import ConfigError
from schemas.s3url import parse_s3_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://b", ("b", "")),
        ("s3://b/", ("b", "")),
        ("s3://b/photos/2024/", ("b", "photos/2024/")),
        ("s3://b/a b+c", ("b", "a b+c")),
    ],
)
def test_an_s3_url_splits_into_bucket_and_prefix(url: str, expected: tuple[str, str]) -> None:
    assert expected == parse_s3_url(url)


@pytest.mark.parametrize("url", ["https://b/p", "s3:///p", "s3://b/p?x=1", "bucket/prefix"])
def test_anything_but_an_s3_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_s3_url(url)


@pytest.mark.parametrize(
    ("entry", "include", "max_bytes", "reason"),
    [
        (ObjectEntry("b", "a/x.jpg", 10), ["*.jpg"], None, None),
        (ObjectEntry("b", "a/X.JPG", 10), ["*.jpg"], None, None),
        (ObjectEntry("b", "a/x.png", 10), ["*.jpg"], None, SKIP_INCLUDE),
        (ObjectEntry("b", "a/x.png", 10), ["*.jpg", "a/*.png"], None, None),
        (ObjectEntry("b", "a/x.jpg", 11), [], 10, SKIP_SIZE),
        (ObjectEntry("b", "a/x.jpg", None), [], 10, None),
        (ObjectEntry("b", "a/", 0), [], None, SKIP_OTHER),
        (ObjectEntry("b", "a/x.jpg", 10, storage_class="DEEP_ARCHIVE"), [], None, SKIP_OTHER),
        (ObjectEntry("b", "a/x.jpg", 10, storage_class="GLACIER_IR"), [], None, None),
    ],
    ids=[
        "match",
        "match-ignoring-case",
        "no-match",
        "second-glob",
        "too-large",
        "size-unknown",
        "folder-marker",
        "archived",
        "instant-retrieval",
    ],
)
def test_filters_say_why_an_object_is_skipped(
    entry: ObjectEntry, include: list[str], max_bytes: int | None, reason: str | None
) -> None:
    assert reason == skip_reason(entry, include, max_bytes)


def test_a_backfill_job_id_depends_only_on_the_backfill_and_the_object() -> None:
    entry = ObjectEntry("b", "k.jpg", 1)
    assert backfill_job_id("bf-1", entry) == backfill_job_id("bf-1", ObjectEntry("b", "k.jpg", 999, etag="x"))
    assert backfill_job_id("bf-1", entry) != backfill_job_id("bf-2", entry)
    assert backfill_job_id("bf-1", entry) != backfill_job_id("bf-1", ObjectEntry("b", "k.jpg", 1, version_id="v"))
    assert 32 == len(backfill_job_id("bf-1", entry))


def test_the_gate_lets_through_exactly_the_headroom_then_waits_for_the_queue_to_shrink() -> None:
    depths = iter([1, 3, 3, 0])
    measured: list[int] = []

    def depth() -> int:
        measured.append(next(depths))
        return measured[-1]

    ticks: list[int] = []
    gate = Backpressure(depth, 3, threading.Event(), min_wait_s=0.001, on_wait=lambda: ticks.append(1))
    for _ in range(2):  # depth 1 of 3: two slots
        gate.acquire()
    gate.acquire()  # full (3, 3): waits twice, then the queue drained to 0
    assert [1, 3, 3, 0] == measured
    assert (2, 3) == (gate.waits, gate.peak_depth)
    assert 2 == len(ticks)  # the display and the run lease are kept fresh while waiting


def test_a_stop_request_ends_a_wait_at_the_cap_at_once() -> None:
    stop = threading.Event()
    gate = Backpressure(lambda: 10, 10, stop, min_wait_s=5, max_wait_s=5)
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        gate.acquire()
    assert time.monotonic() - started < 2


def test_inventory_rows_decode_form_encoded_keys_and_drop_delete_markers_and_old_versions() -> None:
    index = {name: i for i, name in enumerate(["Bucket", "Key", "VersionId", "IsLatest", "IsDeleteMarker", "Size"])}
    row = ["b", "a/red+flower%2B1%C3%A9.jpg", "v9", "true", "false", "12"]
    entry = _entry(row, index, (0, 1))
    assert entry == ObjectEntry("b", "a/red flower+1é.jpg", 12, version_id="v9", position=(0, 1))
    assert _entry(["b", "k", "", "true", "true", ""], index, (0, 2)) is None
    assert _entry(["b", "k", "v1", "false", "false", "1"], index, (0, 3)) is None
    assert _entry(["b", "k"], {"Bucket": 0, "Key": 1}, (0, 4)) == ObjectEntry("b", "k", None, position=(0, 4))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"type":"guardq.moderation.completed","data":{"backfill_id":"bf-1"}}', ("bf-1", "completed", None)),
        (b'{"type":"guardq.moderation.failed","data":{"backfill_id":"bf-1"}}', ("bf-1", "failed", None)),
        (
            b'{"type":"guardq.moderation.failed","data":{"backfill_id":"bf-1","sample":{"shard":"s3://b/0.tar"}}}',
            ("bf-1", "failed", "s3://b/0.tar"),
        ),
        (b'{"type":"guardq.moderation.completed","data":{}}', None),
        (b'{"type":"other","data":{"backfill_id":"bf-1"}}', None),
        (b"not json", None),
        (None, None),
    ],
)
def test_the_tally_reads_only_the_backfill_id_outcome_and_dataset_shard_of_an_event(
    raw: bytes | None, expected: tuple[str, str, str | None] | None
) -> None:
    assert expected == _backfill_event(raw)
