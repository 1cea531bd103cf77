"""Stored policies, tenant defaults, confidence thresholds and verdict-only mode through the real worker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis as redis_lib

from producers.policy_store import PolicyStore, build_policy
from schemas.job import ImageRef, ModerationJob
from schemas.policy import Policy
from schemas.taxonomy import PromptVersion
from tests import images
from tests.conftest import BUCKET, Runner
from tests.sglang_server import SimulatedSGLang
from tests.sglang_server.server import Rule

pytestmark = pytest.mark.integration

BORDERLINE = (90, 160, 90)  # a green the test server rates Safe with P(Unsafe) = 0.4


def put(s3_client: Any, data: bytes) -> str:
    key = f"pol/{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def borderline(sim: SimulatedSGLang) -> None:
    sim.configure(rules=[Rule(BORDERLINE, "Safe", "NA: None applying", "Looks fine (simulated).", p_unsafe=0.4)])


def test_a_low_confidence_safe_verdict_is_routed_to_review(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    borderline(sim)
    uri = put(s3_client, images.solid(BORDERLINE))
    strict = ModerationJob(image=ImageRef.parse(uri), policy=Policy(name="strict", unsafe_threshold=0.35))
    lenient = ModerationJob(image=ImageRef.parse(uri), policy=Policy(name="lenient", unsafe_threshold=0.5))
    no_threshold = ModerationJob(image=ImageRef.parse(uri))
    events = runner.run(strict, lenient, no_threshold)
    flagged = events[strict.job_id]
    assert flagged.data.verdict is not None and "Safe" == flagged.data.verdict.rating
    assert 0.4 == flagged.data.verdict.unsafe_score
    assert (True, True) == (flagged.data.needs_review, flagged.needsreview)
    assert '"needsreview":true' in flagged.to_json()
    for other in (events[lenient.job_id], events[no_threshold.job_id]):
        assert (False, None) == (other.data.needs_review, other.needsreview)
        assert '"needsreview"' not in other.to_json()


def test_an_unsafe_verdict_is_not_a_review_case_whatever_its_score(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    job = ModerationJob(
        image=ImageRef.parse(put(s3_client, images.solid((220, 30, 30)))),
        policy=Policy(name="strict", unsafe_threshold=0.1),
    )
    event = runner.one(job)
    assert event.data.verdict is not None and "Unsafe" == event.data.verdict.rating
    assert event.data.needs_review is False


def test_a_stored_policy_version_and_its_sha256_are_named_in_the_event(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any, redis_client: redis_lib.Redis
) -> None:
    name = f"it-{uuid.uuid4().hex[:8]}"
    store = PolicyStore(redis_client)
    store.create(build_policy(name, non_violating=["O9"]))
    v2 = store.create(build_policy(name, non_violating=["O9", "O2"], verdict_only=True)).stored.policy
    uri = put(s3_client, images.solid((220, 30, 30)))
    pinned = ModerationJob(image=ImageRef.parse(uri), policy_ref=f"{name}@1")
    latest = ModerationJob(image=ImageRef.parse(uri), policy_ref=name)
    events = runner.run(pinned, latest)
    first, second = events[pinned.job_id].data, events[latest.job_id].data
    assert first.policy is not None and second.policy is not None
    assert (name, 1, False) == (first.policy.name, first.policy.version, first.verdict_only)
    assert (name, 2, True) == (second.policy.name, second.policy.version, second.verdict_only)
    assert v2.sha256(PromptVersion.V1_0) == second.policy.sha256
    assert second.verdict is not None and second.verdict.rationale is None
    texts = {r["rid"].split(".")[0]: r["policy_text"] for r in sim.chat_requests()}
    assert v2.text(PromptVersion.V1_0) == texts[latest.job_id]


def test_a_job_naming_no_policy_runs_under_its_tenants_default(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any, redis_client: redis_lib.Redis
) -> None:
    name, tenant = f"it-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    store = PolicyStore(redis_client)
    store.create(build_policy(name, non_violating=["O9"], unsafe_threshold=0.35))
    store.set_tenant_default(tenant, name)
    borderline(sim)
    uri = put(s3_client, images.solid(BORDERLINE))
    mine = ModerationJob(image=ImageRef.parse(uri), tenant=tenant)
    builtin = ModerationJob(image=ImageRef.parse(uri), tenant=tenant, policy_ref="default")
    events = runner.run(mine, builtin)
    assert events[mine.job_id].data.policy is not None
    assert (name, 1, True) == (
        events[mine.job_id].data.policy.name,
        events[mine.job_id].data.policy.version,
        events[mine.job_id].data.needs_review,
    )
    assert events[builtin.job_id].data.policy is not None
    assert "default" == events[builtin.job_id].data.policy.name
    store.set_tenant_default(tenant, None)


def test_verdict_only_asks_for_a_schema_without_rationale(runner: Runner, sim: SimulatedSGLang, s3_client: Any) -> None:
    job = ModerationJob(
        image=ImageRef.parse(put(s3_client, images.solid())), policy=Policy(name="bulk", verdict_only=True)
    )
    event = runner.one(job)
    [request] = [r for r in sim.chat_requests() if str(r["rid"]).startswith(job.job_id)]
    assert ["rating", "category"] == list(request["body"]["response_format"]["json_schema"]["schema"]["properties"])
    assert event.data.verdict is not None
    assert (True, None, "Safe") == (event.data.verdict_only, event.data.verdict.rationale, event.data.verdict.rating)


def test_a_flagged_rationale_policy_explains_unsafe_and_borderline_verdicts_only(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any
) -> None:
    """rationale: flagged — one verdict-only request for a clear Safe, a continuation for Unsafe and borderline."""
    borderline(sim)
    sim.configure(rules=[*sim.behaviour.rules, Rule((220, 30, 30), "Unsafe", "O2: Violence, Harm, or Cruelty", "Red.")])
    policy = Policy(name="flag", rationale="flagged", unsafe_threshold=0.35)
    jobs = {
        name: ModerationJob(image=ImageRef.parse(put(s3_client, images.solid(color))), policy=policy)
        for name, color in (("clear", (40, 120, 200)), ("borderline", BORDERLINE), ("unsafe", (220, 30, 30)))
    }
    events = runner.run(*jobs.values())
    verdicts = {name: events[job.job_id].data.verdict for name, job in jobs.items()}
    assert all(events[j.job_id].data.rationale_mode == "flagged" for j in jobs.values())
    assert (None, "Looks fine (simulated).", "Red.") == tuple(v.rationale for v in verdicts.values() if v)
    per_job = {name: sum(1 for r in sim.chat_requests() if str(r["rid"]).startswith(j.job_id)) for name, j in jobs.items()}
    assert {"clear": 1, "borderline": 2, "unsafe": 2} == per_job
