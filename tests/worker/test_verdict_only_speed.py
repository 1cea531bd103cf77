"""Verdict-only mode's speedup, measured through the real worker on the test server's token-proportional model.

The server holds each request ``prefill_s + per_token_s * completion tokens`` behind ``max_running`` slots
(continuous batching's shape); verdict-only stops after rating and category, so it decodes fewer tokens.
Run with ``-s`` to see the figures (docs/evaluation.md quotes them).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from schemas.job import ImageRef, ModerationJob
from schemas.policy import Policy
from tests import images
from tests.conftest import BUCKET, Runner
from tests.sglang_server import SimulatedSGLang
from tests.sglang_server.protocol import tokens
from tests.sglang_server.server import SAFE, Rule

pytestmark = pytest.mark.integration

JOBS = 24
SLOTS = 8
PER_TOKEN_S = 0.004
PREFILL_S = 0.05
GREY = (128, 128, 128)
LLAVAGUARD_LENGTH = (  # 65 words, a typical LlavaGuard rationale
    "The image shows a person holding a kitchen knife while cutting vegetables on a wooden board. Although a "
    "knife is visible, it is used as an ordinary kitchen utensil and nothing suggests violence, a threat or "
    "harm to any person or animal. The content therefore does not fall under O2: Violence, Harm, or Cruelty "
    "or any other category of the policy and is considered safe."
)


def completion_tokens(rationale: str | None) -> int:
    verdict = {"rating": "Safe", "category": SAFE[1]} | ({"rationale": rationale} if rationale else {})
    return len(tokens(json.dumps(verdict, indent=4)))


def timed_batch(runner: Runner, uri: str, *, verdict_only: bool) -> float:
    policy = Policy(name="bulk" if verdict_only else "full", verdict_only=verdict_only)
    jobs = [ModerationJob(image=ImageRef.parse(uri), policy=policy) for _ in range(JOBS)]
    start = time.perf_counter()
    events = runner.run(*jobs, timeout_s=60)
    elapsed = time.perf_counter() - start
    assert all(e.data.verdict is not None and e.data.verdict_only is verdict_only for e in events.values())
    return elapsed


@pytest.mark.parametrize(
    ("rationale", "minimum"),
    [(SAFE[2], 1.2), (LLAVAGUARD_LENGTH, 2.0)],
    ids=["simulator-rationale", "llavaguard-length"],
)
def test_verdict_only_finishes_a_batch_faster(
    runner: Runner, sim: SimulatedSGLang, s3_client: Any, rationale: str, minimum: float
) -> None:
    sim.configure(
        per_token_s=PER_TOKEN_S, prefill_s=PREFILL_S, max_running=SLOTS, rules=[Rule(GREY, *SAFE[:2], rationale)]
    )
    key = f"speed/{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=images.solid(GREY))
    uri = f"s3://{BUCKET}/{key}"
    runner.run(ModerationJob(image=ImageRef.parse(uri)), timeout_s=30)  # warm the worker's clients
    # The best of three interleaved runs each: one batch takes a second or two, and a stall of the shared 2-core box
    # in one of them (seen in CI: a verdict-only batch slower than the full one) is noise, not the mode's speed.
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(3):
        for verdict_only in (False, True):
            runs[verdict_only].append(timed_batch(runner, uri, verdict_only=verdict_only))
    full, short = min(runs[False]), min(runs[True])
    speedup = full / short
    print(
        f"\nverdict-only [{JOBS} jobs, {SLOTS} slots, prefill {PREFILL_S}s, {PER_TOKEN_S}s/token]: "
        f"full {completion_tokens(rationale)} tokens {full:.2f}s ({JOBS / full:.1f} img/s), "
        f"verdict-only {completion_tokens(None)} tokens {short:.2f}s ({JOBS / short:.1f} img/s), "
        f"speedup x{speedup:.2f}"
    )
    assert speedup >= minimum
