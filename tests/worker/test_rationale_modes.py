"""Rationale modes: ``always`` (one pass), ``flagged`` (verdict, then the rationale continued from it), ``never``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from schemas.models import get_model
from schemas.policy import Policy
from schemas.settings import Settings
from schemas.taxonomy import PromptVersion
from schemas.verdict import Verdict
from tests import images
from tests.sglang_server import SimulatedSGLang
from tests.sglang_server.server import Rule
from worker.image import prepare_image
from worker.inference.base import InferenceRequest
from worker.inference.continuation import rationale_prefix
from worker.inference.sglang import SGLangBackend

RED, BLUE, ORANGE = (220, 30, 30), (40, 120, 200), (230, 140, 30)


@pytest.fixture
def greedy(sim: SimulatedSGLang) -> Iterator[SGLangBackend]:
    """Temperature 0: the sampled tokens are the model's argmax, so one pass and two steps must agree exactly."""
    client = SGLangBackend(Settings(sglang_url=sim.url, temperature=0.0), get_model("AIML-TUDA/LlavaGuard-7B"))
    yield client
    client.close()


def request(color: tuple[int, int, int], **kw: object) -> InferenceRequest:
    prepared = prepare_image(images.solid(color), max_side=336, max_pixels=10**8)
    text = Policy().text(PromptVersion.V1_0)
    return InferenceRequest(image=prepared, policy_text=text, rid="m.1", want_score=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["compact", "indent4"])
@pytest.mark.parametrize("rationale_chars", [None, 300])
def test_two_steps_give_the_one_pass_output_at_temperature_zero(
    greedy: SGLangBackend, sim: SimulatedSGLang, layout: str, rationale_chars: int | None
) -> None:
    sim.configure(layout=layout, rationale_chars=rationale_chars)
    one_pass = greedy.infer(request(RED))
    two_steps = greedy.infer(request(RED, flagged_only=True))
    assert one_pass.verdict == two_steps.verdict
    assert one_pass.raw_text == two_steps.raw_text  # the same text, whitespace included
    assert "continued" == two_steps.extra["rationale_step"]


def test_a_safe_verdict_below_the_threshold_costs_one_verdict_only_request(
    greedy: SGLangBackend, sim: SimulatedSGLang
) -> None:
    result = greedy.infer(request(BLUE, flagged_only=True, unsafe_threshold=0.5))
    assert ("Safe", None, "skipped") == (result.verdict.rating, result.verdict.rationale, result.extra["rationale_step"])
    [only] = sim.chat_requests()
    assert ["rating", "category"] == list(only["body"]["response_format"]["json_schema"]["schema"]["properties"])


def test_a_safe_verdict_at_the_threshold_gets_its_rationale(greedy: SGLangBackend, sim: SimulatedSGLang) -> None:
    sim.configure(rules=[Rule(ORANGE, "Safe", "NA: None applying", "Borderline (simulated).", p_unsafe=0.4)])
    result = greedy.infer(request(ORANGE, flagged_only=True, unsafe_threshold=0.3))
    assert ("Safe", "Borderline (simulated).") == (result.verdict.rating, result.verdict.rationale)
    assert 2 == len(sim.chat_requests())


def test_the_continuation_request_carries_the_verdict_text_and_the_rationales_own_grammar(
    greedy: SGLangBackend, sim: SimulatedSGLang
) -> None:
    sim.configure(cache_report=True)
    result = greedy.infer(request(RED, flagged_only=True))
    first, second = sim.chat_requests()
    assert "logprobs" in first["body"] and "logprobs" not in second["body"]
    assert second["body"]["continue_final_message"] is True
    assert ["user", "assistant"] == second["body"]["roles"]
    schema = second["body"]["response_format"]["json_schema"]["schema"]
    assert {"type": "string", "maxLength": 399} == schema
    # image and policy were computed by step one: only the verdict text is new (stand-in for SGLang's radix cache)
    assert result.extra["continuation_cached_tokens"] >= 0.95 * result.extra["continuation_prompt_tokens"]


def test_the_prefix_keeps_the_models_own_whitespace() -> None:
    compact = '{"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty"}'
    trained = '{\n    "rating": "Unsafe",\n    "category": "O2: Violence, Harm, or Cruelty"\n}'
    assert ('{"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty", "rationale": ', "") == rationale_prefix(
        compact
    )
    assert (
        '{\n    "rating": "Unsafe",\n    "category": "O2: Violence, Harm, or Cruelty",\n    "rationale": ',
        "\n",
    ) == rationale_prefix(trained)


def test_a_continuation_cut_by_the_budget_keeps_the_verdict_and_marks_the_rationale(sim: SimulatedSGLang) -> None:
    sim.configure(rationale_chars=4000)
    client = SGLangBackend(
        Settings(sglang_url=sim.url, max_new_tokens=60, rationale_max_chars=4000), get_model("AIML-TUDA/LlavaGuard-7B")
    )
    try:
        verdict = client.infer(request(RED, flagged_only=True)).verdict
    finally:
        client.close()
    assert ("Unsafe", True) == (verdict.rating, verdict.rationale_truncated)
    assert verdict.rationale


def test_a_verdict_text_the_prefix_cannot_be_rebuilt_from_falls_back_to_one_pass(
    greedy: SGLangBackend, sim: SimulatedSGLang, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.inference.sglang as module
    from worker.inference.output import InvalidModelOutput

    def refuse(_text: str) -> tuple[str, str]:
        raise InvalidModelOutput("no prefix")

    monkeypatch.setattr(module, "rationale_prefix", refuse)
    result = greedy.infer(request(RED, flagged_only=True))
    assert ("Unsafe", "The image is predominantly red (simulated O2).") == (result.verdict.rating, result.verdict.rationale)
    assert ["rating", "category", "rationale"] == list(
        sim.chat_requests()[-1]["body"]["response_format"]["json_schema"]["schema"]["properties"]
    )


@dataclass(frozen=True)
class ChosenMix(InferenceRequest):
    """Random weights (and the test server's default rule) cannot choose the mix: the test says what is flagged."""

    chosen: bool = False

    def flagged(self, verdict: Verdict) -> bool:
        return self.chosen


@pytest.mark.parametrize("scheduling", ["fcfs", "priority"])
def test_under_saturation_a_continuation_finds_its_prefix_cached_only_when_admitted_ahead_of_new_verdicts(
    sim: SimulatedSGLang, scheduling: str
) -> None:
    """What the H200 showed (docs/data/sglang-0.5.17-rationale-{fcfs,priority}.json): with more verdicts waiting
    than the KV pool holds, a continuation queued behind them (first come first served) found 28 % of its prompt
    cached; admitted first (guardq's priority 1 over 0 under --enable-priority-scheduling) it found 99 %."""
    model = get_model("AIML-TUDA/LlavaGuard-7B")
    backend = SGLangBackend(Settings(sglang_url=sim.url), model)
    try:
        sim.configure(cache_report=True)
        prompt = backend.infer(request(BLUE)).prompt_tokens or 0
        # 8 running; the pool holds them (prompt + reserved new tokens) and eight finished prompts besides, far
        # fewer than the 40 verdicts waiting ahead of a continuation that queues at the back
        sim.configure(
            max_running=8,
            latency_s=0.1,
            priority_scheduling=scheduling == "priority",
            max_total_tokens=8 * (prompt + 500) + 8 * prompt,
        )
        text = Policy().text(PromptVersion.V1_0)
        batch = [
            ChosenMix(
                image=prepare_image(images.solid((i, 100, 200)), max_side=336, max_pixels=10**8),
                policy_text=text,
                rid=f"mix.{i}",
                flagged_only=True,
                chosen=i % 10 == 0,
            )
            for i in range(80)
        ]
        with ThreadPoolExecutor(48) as pool:
            results = list(pool.map(backend.infer, batch))
    finally:
        backend.close()
    assert 8 == sum(1 for r in results if r.verdict.rationale is not None)  # every flagged verdict has its rationale
    shares = [
        int(r.extra["continuation_cached_tokens"] or 0) / int(r.extra["continuation_prompt_tokens"] or 1)
        for r in results
        if r.extra.get("rationale_step") == "continued"
    ]
    assert 8 == len(shares)
    if scheduling == "priority":
        assert min(shares) >= 0.95, shares
    else:
        assert sum(1 for share in shares if share < 0.5) >= 4, shares  # most were evicted while they queued


def test_verdicts_go_out_at_priority_0_and_continuations_at_1_unless_priorities_are_off(sim: SimulatedSGLang) -> None:
    for setting, expected in ((True, [0, 1]), (False, [None, None])):
        sim.reset()
        client = SGLangBackend(Settings(sglang_url=sim.url, sglang_priority=setting), get_model("AIML-TUDA/LlavaGuard-7B"))
        try:
            client.infer(request(RED, flagged_only=True))
        finally:
            client.close()
        assert expected == [r["body"].get("priority") for r in sim.chat_requests()]
