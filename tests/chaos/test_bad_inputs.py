"""A hostile-input corpus through the real worker: each case ends in exactly one event with its precise code.

Three groups, each recorded as a row of docs/reliability.md:
- the image corpus in ``tests/fixtures/bad_inputs/`` (built by ``tests/fixtures/make_bad_inputs.py``; ``cases.json``
  says what each file must produce — good images complete, bad ones fail with their own code);
- sources and keys: an object one byte over ``GUARDQ_MAX_IMAGE_BYTES`` (200 MB in the chaos run), unicode and
  ``../`` keys, missing objects;
- malformed job messages on the queue: not JSON at all, an undecodable body, refused content, an unknown task,
  wrong arguments, wrong schema version, missing or unknown fields, unknown policy and model.
After each group the worker is still up, still moderates, and its resident memory stayed bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from producers.uploads import UploadStore
from schemas.events import CloudEvent
from schemas.job import ImageRef, ModerationJob
from schemas.settings import Settings
from tests import images
from tests.chaos import rawqueue
from tests.chaos.cluster import rss_mb
from tests.chaos.ledger import record, tally, worker_settings
from tests.conftest import BUCKET, Runner
from tests.services.procs import Service
from worker.delivery.stream.reader import last_id, wait_for

pytestmark = pytest.mark.integration
CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "bad_inputs"
EXPECTED: dict[str, str] = json.loads((CORPUS / "cases.json").read_text())
RSS_SLACK_MB = 150  # one 64-megapixel decode would already cost ~190 MiB; bombs must never get that far


def outcome(event: CloudEvent) -> str:
    return event.data.error.code.value if event.data.error else "completed"


@pytest.fixture
def guarded(worker: Service, runner: Runner) -> Iterator[dict[str, float]]:
    """The shared worker's RSS before and after the test; afterwards it must be alive and still moderate."""
    memory = {"before": rss_mb(worker.proc.pid), "started": time.monotonic()}
    yield memory
    assert worker.proc.poll() is None, "the worker died"
    memory["after"] = rss_mb(worker.proc.pid)
    assert memory["after"] < memory["before"] + RSS_SLACK_MB, memory
    assert "completed" == outcome(runner.one(ModerationJob(image=ImageRef.parse(upload(runner, images.solid())))))


def upload(runner: Runner, data: bytes) -> str:
    return str(UploadStore(runner.queue.settings).put(data))


def test_every_file_of_the_hostile_corpus_ends_in_one_event_with_its_code(
    runner: Runner, s3_client: Any, guarded: dict[str, float], worker: Service
) -> None:
    assert len(EXPECTED) >= 30
    prefix = f"bad-inputs/{uuid.uuid4().hex[:8]}/"
    jobs = {}
    for name in EXPECTED:
        s3_client.put_object(Bucket=BUCKET, Key=prefix + name, Body=(CORPUS / name).read_bytes())
        jobs[name] = ModerationJob(image=ImageRef.parse(f"s3://{BUCKET}/{prefix}{name}"))
    events = runner.run(*jobs.values(), timeout_s=90)
    got = {name: outcome(events[job.job_id]) for name, job in jobs.items()}
    rotated = events[jobs["exif-rotated.jpg"].job_id].data.image
    assert (40, 80) == (rotated.width, rotated.height)  # reported upright
    assert EXPECTED == got
    record_group(runner, worker, "image corpus", got, [j.job_id for j in jobs.values()], guarded)


def record_group(
    runner: Runner, worker: Service, group: str, got: dict[str, str], ids: list[str], memory: dict[str, float]
) -> None:
    result = tally(runner.queue.redis, ids, scenario="bad_inputs", variant=f"{group} ({len(ids)} cases)")
    result.seconds = round(time.monotonic() - memory["started"], 2)
    result.extra = {
        "rss_mb_before": memory["before"],
        "rss_mb_during": rss_mb(worker.proc.pid),
        "settings": worker_settings(runner.queue.settings),
    }
    result.notes = "; ".join(f"{case} -> {code}" for case, code in got.items())
    record(result)
    assert (len(ids), 0, 0, 0) == (result.survived, result.lost, result.duplicated, result.stuck), got


def sparse_upload(settings: Settings, size: int) -> str:
    """An ``upload://`` object of ``size`` bytes that costs no disk (a sparse file in the local upload store)."""
    key = f"{hashlib.sha256(str(size).encode()).hexdigest()}.jpg"
    path = Path(unquote(urlsplit(settings.upload_store).path)) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    return f"upload://{key}"


@pytest.mark.parametrize(
    "huge", [pytest.param(False, id="fast"), pytest.param(True, id="200MB", marks=pytest.mark.chaos)]
)
@pytest.mark.timeout(300)
def test_hostile_sources_and_keys_fail_with_precise_codes(
    runner: Runner, s3_client: Any, settings: Settings, guarded: dict[str, float], worker: Service, huge: bool
) -> None:
    prefix = f"keys/{uuid.uuid4().hex[:8]}/"
    good = images.solid((30, 140, 90))
    unicode_key = prefix + "ünïcødé/猫 🐱 'quote\" &amp;.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=unicode_key, Body=good)
    s3_client.put_object(Bucket=BUCKET, Key=prefix + "inner.jpg", Body=good)
    cases: dict[str, tuple[str, str]] = {
        "one byte over the size limit (upload store)": (
            sparse_upload(settings, settings.max_image_bytes + 1),
            "too_large",
        ),
        "unicode S3 key": (f"s3://{BUCKET}/{unicode_key}", "completed"),
        "S3 key climbing out with ../": (f"s3://{BUCKET}/{prefix}x/../../../etc/passwd", "invalid_source"),
        "S3 key escaping its bucket with ../": (f"s3://{BUCKET}/../other-bucket/{prefix}inner.jpg", "invalid_source"),
        "upload key climbing out with ../": ("upload://../../etc/passwd", "invalid_source"),
        "upload key with unicode": ("upload://ünïcødé.jpg", "invalid_source"),
        "upload key that is absolute": ("upload:///etc/passwd", "invalid_source"),
        "missing S3 object": (f"s3://{BUCKET}/{prefix}nope.jpg", "not_found"),
        "missing S3 bucket": ("s3://no-such-bucket-guardq/x.jpg", "not_found"),
        "missing upload": (f"upload://{'0' * 64}.jpg", "not_found"),
    }
    if huge:
        size = 200 * 1024 * 1024
        with (Path(os.environ.get("TMPDIR", "/tmp")) / f"guardq-200mb-{uuid.uuid4().hex}").open("w+b") as big:
            big.truncate(size)
            big.seek(0)
            s3_client.upload_fileobj(big, BUCKET, prefix + "200mb.jpg")
        cases["a 200 MB S3 object"] = (f"s3://{BUCKET}/{prefix}200mb.jpg", "too_large")
        cases["a 200 MB upload"] = (sparse_upload(settings, size), "too_large")
    jobs = {case: ModerationJob(image=ImageRef.parse(uri)) for case, (uri, _) in cases.items()}
    events = runner.run(*jobs.values(), timeout_s=120)
    got = {case: outcome(events[job.job_id]) for case, job in jobs.items()}
    assert {case: code for case, (_, code) in cases.items()} == got
    group = "sources and keys" + (" with 200 MB objects" if huge else "")
    record_group(runner, worker, group, got, [j.job_id for j in jobs.values()], guarded)


def malformed_messages(runner: Runner, s3_uri: str) -> dict[str, tuple[Callable[[], str], str]]:
    """case -> (send it, returning the job id its event must carry; expected code)."""
    queue = runner.queue
    good = ModerationJob(image=ImageRef.parse(s3_uri)).to_message()

    def raw_entry() -> str:
        entry = f"this is not JSON at all {uuid.uuid4().hex}".encode()
        rawqueue.push_entry(queue, entry)
        return f"malformed-{hashlib.sha256(entry).hexdigest()[:32]}"

    def envelope_json_list() -> str:
        entry = json.dumps([1, 2, uuid.uuid4().hex]).encode()
        rawqueue.push_entry(queue, entry)
        return f"malformed-{hashlib.sha256(entry).hexdigest()[:32]}"

    def body(data: bytes, content_type: str = "application/json", task: str = "guardq.moderate") -> str:
        task_id = f"raw-{uuid.uuid4().hex}"
        rawqueue.publish_message(queue, data, content_type=content_type, headers=rawqueue.task_headers(task_id, task))
        return task_id

    def args(*positional: Any, **keywords: Any) -> Callable[[], str]:
        return lambda: rawqueue.send_args(queue, list(positional), keywords)

    def job(**changes: Any) -> Callable[[], str]:
        message = {k: v for k, v in (good | changes).items() if v is not None} | {"job_id": uuid.uuid4().hex}
        return lambda: rawqueue.send_args(queue, [message], task_id=message["job_id"])

    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return {
        "queue entry that is not JSON": (raw_entry, "invalid_job"),
        "queue entry that is a JSON list": (envelope_json_list, "invalid_job"),
        "message body that is not JSON": (lambda: body(b'{"broken": '), "invalid_job"),
        "pickle body (refused content type)": (
            lambda: body(b"\x80\x04K\x01.", "application/x-python-serialize"),
            "invalid_job",
        ),
        "unknown task name": (
            lambda: body(json.dumps([[good], {}, embed]).encode(), task="guardq.other"),
            "invalid_job",
        ),
        "no arguments": (args(), "invalid_job"),
        "two arguments and a keyword": (args(good, good, extra=1), "invalid_job"),
        "job that is a string": (args("not an object"), "invalid_job"),
        "wrong schema version": (job(schema_version=99), "invalid_job"),
        "missing image": (job(image=None), "invalid_job"),
        "unknown field": (job(surprise="!"), "invalid_job"),
        "image URI with a bad scheme": (job(image={"uri": "ftp://example.com/x.jpg"}), "forbidden_source"),
        "image URI without a scheme": (job(image={"uri": "cat.jpg"}), "invalid_job"),
        "metadata over 16 KiB": (job(metadata={"blob": "x" * 20_000}), "invalid_job"),
        "invalid inline policy": (job(policy={"declarations": {"O42": "non_violating"}}), "invalid_job"),
        "unknown policy": (job(policy_ref="no-such-policy"), "policy_unknown"),
        "unknown model": (job(model="AIML-TUDA/LlavaGuard-999B"), "model_unknown"),
        "model this worker does not serve": (job(model="AIML-TUDA/LlavaGuard-34B"), "model_unavailable"),
    }


@pytest.mark.timeout(120)
def test_malformed_job_messages_each_end_in_one_failed_event(
    runner: Runner, s3_client: Any, guarded: dict[str, float], worker: Service
) -> None:
    key = f"msgs/{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=images.solid())
    after = last_id(runner.queue.redis)
    sent = {case: (send(), code) for case, (send, code) in malformed_messages(runner, f"s3://{BUCKET}/{key}").items()}
    ids = [job_id for job_id, _ in sent.values()]
    events = {e.data.job_id: e for e in wait_for(runner.queue.redis, ids, after=after, timeout_s=60)}
    got = {case: outcome(events[job_id]) if job_id in events else "lost" for case, (job_id, _) in sent.items()}
    assert {case: code for case, (_, code) in sent.items()} == got
    for job_id in ids:
        assert 1 == len(runner.events_for(job_id))
    record_group(runner, worker, "malformed job messages", got, ids, guarded)
