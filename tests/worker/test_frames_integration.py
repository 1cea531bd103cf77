"""Animated images and videos through the real worker: no unsafe frame hides after the first.

The corpus is built here: animations (GIF, WebP, APNG) and clips (MP4, MOV, WebM) whose only unsafe frames are not
the first, at various positions, short and long (past the budget of 16 model calls, past the 900 frames a video
is decoded in full). The SGLang test server rates each frame it gets on that frame's own content. Every file must
come back Unsafe, with at most the budget of model calls, and the event must list its frames. The figures of the
run are written to ``var/frames/corpus.json`` (docs/frames.md quotes them).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas.events import CloudEvent, EventType
from schemas.job import ImageRef, ModerationJob
from schemas.policy import Policy
from tests import motion
from tests.conftest import BUCKET, Runner
from tests.sglang_server import SimulatedSGLang

pytestmark = pytest.mark.integration
BUDGET = 16  # GUARDQ_FRAME_BUDGET's default; the shared test worker runs with it
O2 = "O2: Violence, Harm, or Cruelty"
REPORT = Path(__file__).resolve().parents[2] / "var" / "frames" / "corpus.json"
SCENECUT_OFF = {"x264-params": "keyint=250:scenecut=0"}


def corpus() -> dict[str, tuple[bytes, set[int]]]:
    """name -> (file, indices of its unsafe frames); frame 0 is always harmless."""
    cases: dict[str, tuple[bytes, set[int]]] = {}
    for count, positions in ((12, (1, 6, 11)), (120, (37, 90, 119)), (240, (1, 133))):
        for at in positions:
            cases[f"gif {count} frames, unsafe frame {at}"] = (motion.animation(count, {at}), {at})
    for fmt, count, positions in (("WEBP", 30, (17, 29)), ("PNG", 20, (9, 19))):
        for at in positions:
            cases[f"{fmt.lower()} {count} frames, unsafe frame {at}"] = (motion.animation(count, {at}, fmt=fmt), {at})
    for at in (1, 40, 74):
        cases[f"mp4 75 frames, unsafe frame {at}"] = (motion.clip(75, {at}), {at})
    cases["mov 50 frames, unsafe frame 20"] = (motion.clip(50, {20}, container="mov"), {20})
    cases["webm vp8 100 frames, unsafe frame 63"] = (motion.clip(100, {63}, container="webm", codec="libvpx"), {63})
    vp9 = motion.clip(60, {44}, container="webm", codec="libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"})
    cases["webm vp9 60 frames, unsafe frame 44"] = (vp9, {44})
    segment = set(range(700, 750))
    cases["mp4 1500 frames (60 s), unsafe 700-749"] = (motion.clip(1500, segment), segment)
    segment = set(range(1100, 1175))
    cases["mp4 1500 frames, keyframes every 250, no scene cuts, unsafe 1100-1174"] = (
        motion.clip(1500, segment, options=SCENECUT_OFF),
        segment,
    )
    return cases


def put(s3_client: Any, data: bytes) -> ImageRef:
    key = f"frames/{uuid.uuid4().hex}"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return ImageRef.parse(f"s3://{BUCKET}/{key}")


def calls(sim: SimulatedSGLang, job: ModerationJob) -> int:
    return sum(1 for r in sim.chat_requests() if str(r["rid"]).startswith(job.job_id + "."))


def test_every_file_whose_only_unsafe_frames_come_later_is_flagged_within_the_budget(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    files = corpus()
    jobs = {name: ModerationJob(image=put(s3_client, data)) for name, (data, _) in files.items()}
    first_only = Policy(name="first-frame", first_frame_only=True)  # what guardq did before: frame 0 alone
    baseline = [ModerationJob(image=job.image, policy=first_only) for job in jobs.values()]
    events = runner.run(*jobs.values(), *baseline, timeout_s=180)
    baseline_flagged = sum(1 for j in baseline if (v := events[j.job_id].data.verdict) is not None and v.unsafe)
    rows = []
    for name, job in jobs.items():
        event = events[job.job_id]
        frames = event.data.frames
        assert event.type == EventType.COMPLETED, (name, event.data.error)
        assert event.data.verdict is not None and frames is not None
        rows.append(
            {
                "file": name,
                "rating": event.data.verdict.rating,
                "category": event.data.verdict.category,
                "frames": frames.total,
                "sampled": frames.sampled,
                "duplicates": frames.duplicates,
                "over_budget": frames.over_budget,
                "moderated": frames.moderated,
                "model_calls": calls(sim, job),
                "decisive": frames.decisive,
                "unsafe_found": [r.index for r in frames.unsafe_frames],
            }
        )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    flagged = sum(1 for row in rows if row["rating"] == "Unsafe")
    summary = {"budget": BUDGET, "flagged": flagged, "first_frame_only_flagged": baseline_flagged, "of": len(rows)}
    REPORT.write_text(json.dumps(summary | {"files": rows}, indent=2) + "\n")
    assert 0 == baseline_flagged  # frame 0 is harmless in every file: the first frame alone lets all of them pass
    for row, (_, unsafe) in zip(rows, files.values(), strict=True):
        assert ("Unsafe", O2) == (row["rating"], row["category"]), row
        assert row["decisive"] in unsafe and set(row["unsafe_found"]) <= unsafe, row
        assert row["model_calls"] == row["moderated"] <= BUDGET, row
        assert row["sampled"] == row["moderated"] + row["duplicates"] + row["over_budget"], row


def test_a_harmless_animation_is_safe_and_its_event_lists_each_moderated_frame(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    job = ModerationJob(image=put(s3_client, motion.animation(20, duration_ms=100)), metadata={"post": "7"})
    event = runner.one(job)
    frames = event.data.frames
    assert event.data.verdict is not None and frames is not None
    assert ("Safe", "animation", 20, 2.0) == (event.data.verdict.rating, frames.source, frames.total, frames.duration_s)
    assert [r.index for r in frames.results] == sorted(r.index for r in frames.results)
    assert all(r.rating == "Safe" and r.category == "NA" and r.time_s == r.index / 10 for r in frames.results)
    assert 0 == frames.results[0].index
    assert (160, 120, "GIF") == (event.data.image.width, event.data.image.height, event.data.image.format)
    assert event.data.image.sha256 is not None and event.data.metadata == {"post": "7"}
    assert frames.moderated == calls(sim, job) == len(frames.results)
    assert event.data.timings.prepare_ms is not None and event.data.timings.infer_ms is not None


def test_a_first_frame_only_policy_moderates_one_frame_and_says_so(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    job = ModerationJob(image=put(s3_client, motion.clip(40, {20})), policy=Policy(name="cheap", first_frame_only=True))
    event = runner.one(job)
    frames = event.data.frames
    assert event.data.verdict is not None and frames is not None
    assert ("Safe", True, 1, 1) == (
        event.data.verdict.rating,
        frames.first_frame_only,
        frames.moderated,
        calls(sim, job),
    )


def test_a_frame_request_that_fails_transiently_retries_the_job_which_then_completes(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    sim.add_faults({"status": 503, "message": "The request queue is full"})
    job = ModerationJob(image=put(s3_client, motion.animation(12, {6})))
    event: CloudEvent = runner.one(job)
    assert event.data.verdict is not None and event.data.verdict.rating == "Unsafe"
    attempts = {str(r["rid"]).split(".")[1] for r in sim.chat_requests() if str(r["rid"]).startswith(job.job_id)}
    assert {"1", "2"} == attempts
