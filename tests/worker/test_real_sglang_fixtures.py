"""guardq's SGLang client on responses recorded from a real SGLang 0.5.17 (H200, random-weight LLaVA-1.5-7B shape).

The fixtures in ``tests/fixtures/sglang-0.5.17/`` are what the server answered to guardq's exact request bodies
(``tests/gpu/probes.py``; ``contract-tiny.json`` from the first run with a tiny checkpoint). Replaying them checks
the parsing and scoring code against the real thing rather than against a test server written to agree with it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from schemas.models import get_model
from schemas.settings import Settings
from tests import images
from worker.image import prepare_image
from worker.inference.base import InferenceRequest
from worker.inference.output import parse_truncated, parse_verdict
from worker.inference.scores import rating_score, response_candidates
from worker.inference.sglang import SGLangBackend
from worker.inference.tempering import classify, spread

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sglang-0.5.17"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def replay(payload: dict[str, Any], *, kind: str, with_rationale: bool = True) -> Any:
    """The backend's handling of one recorded response (no HTTP: the server's logprob kind is configured)."""
    backend = SGLangBackend(Settings(sglang_logprobs=kind), get_model("AIML-TUDA/LlavaGuard-7B"))
    prepared = prepare_image(images.solid((40, 120, 200)), max_side=336, max_pixels=10**8)
    request = InferenceRequest(prepared, "policy", "replay.1", with_rationale=with_rationale, want_score=True)
    try:
        return backend._result(payload, request)
    finally:
        backend.close()


def test_a_real_rationale_response_parses_and_its_score_is_detempered_over_every_allowed_candidate() -> None:
    payload = fixture("chat_rationale.json")  # T = 0.2, server without SGLANG_RETURN_ORIGINAL_LOGPROB
    result = replay(payload, kind="tempered")
    assert ("Unsafe", "NA", "stop") == (result.verdict.rating, result.verdict.category_code, result.finish_reason)
    candidates = response_candidates(payload)
    assert candidates is not None
    allowed = [(c["token"], c["logprob"]) for c in candidates if c["logprob"] > -1e30]
    assert {"Unsafe", "Safe", "S", "U", "Uns", "Un"} == {t for t, _ in allowed}  # six first pieces, then masked
    weights = {t: math.exp(0.2 * lp) for t, lp in allowed}
    expected = sum(w for t, w in weights.items() if t.startswith("U")) / sum(weights.values())
    assert pytest.approx(expected, abs=1e-6) == result.verdict.unsafe_score
    assert "detempered" == result.verdict.score_method
    score = rating_score(candidates, temperature=0.2)
    assert score is not None and score.complete  # a masked candidate came back: nothing allowed was cut off


def test_reading_the_same_real_response_as_untempered_would_sharpen_the_score() -> None:
    """What guardq reported before: the tempered values taken at face value."""
    payload = fixture("chat_verdict_only.json")
    naive = rating_score(response_candidates(payload))
    detempered = rating_score(response_candidates(payload), temperature=0.2)
    assert naive is not None and detempered is not None
    assert (0.857, 0.560) == (round(naive.unsafe, 3), round(detempered.unsafe, 3))  # 0.86 reported before, 0.56 true


def test_the_tempering_probe_classifies_the_real_server_as_tempered() -> None:
    hot, cold = spread(fixture("probe_T1_0.json")), spread(fixture("probe_T0_25.json"))
    assert hot is not None and cold is not None
    assert "tempered" == classify(hot, cold)


def test_the_first_runs_tempered_gap_shrinks_back_to_the_untempered_one() -> None:
    """contract-tiny: one prompt's first-token gap was 5.65 at T=0.2 and 1.19 at T=1.0; times T they agree."""
    contract = fixture("contract-tiny.json")
    first = {t: {c[0]: c[1] for c in contract[f"temperature_{t}"]["first_logprobs"][0]["top"]} for t in ("0.2", "1.0")}
    gap_02 = first["0.2"]["{"] - first["0.2"]['{"']
    gap_10 = first["1.0"]["{"] - first["1.0"]['{"']
    assert pytest.approx(gap_10, abs=0.02) == 0.2 * gap_02
    assert "tempered" == classify(gap_10, gap_02 * 1.0)  # the ratio is the temperature's (5x)


def test_a_detempered_score_at_t02_agrees_with_a_direct_reading_at_t1() -> None:
    """The same image at T=0.2 (dup-rid request) and T=1.0: detempered ≈ direct; the raw T=0.2 value does not."""
    contract = fixture("contract-tiny.json")

    def rating_top(entry: list[dict[str, Any]]) -> list[dict[str, Any]]:
        at = next(i for i, t in enumerate(entry) if t["token"] in {"S", "Safe", "Un", "U", "Uns", "Unsafe"})
        return [{"token": tok, "logprob": lp} for tok, lp in entry[at]["top"]]

    cold = rating_top(contract["duplicate_rid_concurrent"][0]["first_logprobs"])
    hot = rating_top(contract["temperature_1.0"]["first_logprobs"])
    direct = rating_score(hot)
    detempered = rating_score(cold, temperature=0.2)
    raw = rating_score(cold)
    assert direct is not None and detempered is not None and raw is not None
    assert abs(detempered.unsafe - direct.unsafe) < 0.05
    assert abs(raw.unsafe - direct.unsafe) > 0.3


@pytest.mark.parametrize("case", ["duplicate_rid_sequential", "temperature_0.2", "temperature_1.0"])
def test_real_outputs_with_raw_control_characters_are_data_not_errors(case: str) -> None:
    contract = fixture("contract-tiny.json")[case]
    assert "Invalid control character" in contract["parse_error"]  # what strict JSON said about them
    head = contract["content_head"]
    verdict = parse_truncated(head)  # the recorded head stops mid-rationale
    assert verdict.rating in {"Safe", "Unsafe"} and verdict.rationale_truncated
    assert any(ord(ch) < 0x20 for ch in verdict.rationale or "") or "\u0005" not in head


def test_a_real_output_cut_at_max_tokens_keeps_its_verdict() -> None:
    """finish_reason length with an unterminated rationale (maxLength 4000, 500 tokens): the verdict survives."""
    contract = fixture("contract-tiny.json")["guardq_body_exact"]
    assert ("length", 500) == (contract["finish_reason"], contract["usage"]["completion_tokens"])
    verdict = parse_truncated(contract["content_head"])
    assert ("Safe", "NA", True) == (verdict.rating, verdict.category_code, verdict.rationale_truncated)


def test_a_complete_real_output_with_control_characters_parses() -> None:
    text = '{"rating": "Safe", "category": "NA: None applying", "rationale": "Delegate\u0005ind image\u001a sort"}'
    assert "Delegate\u0005ind image\u001a sort" == parse_verdict(text).rationale


def test_jobs_never_wait_for_the_tempering_probe() -> None:
    """Behind a full batch the probe queues like any request; jobs use the last answer meanwhile (found when a
    saturated test server stalled every worker thread on the first probe)."""
    import threading
    import time

    from worker.inference.tempering import LogprobKindCache

    release = threading.Event()
    answers = iter([fixture("probe_T1_0.json"), fixture("probe_T0_25.json")])

    def slow_post(_body: dict[str, Any]) -> dict[str, Any]:
        release.wait(5)
        return next(answers)

    cache = LogprobKindCache("auto", slow_post)
    started = time.monotonic()
    assert "tempered" == cache.kind()  # SGLang's default while the probe is out
    assert time.monotonic() - started < 0.5
    assert cache.known is None
    release.set()
    deadline = time.monotonic() + 5
    while cache.known is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "tempered" == cache.known  # what the real server's probe answers said


def test_the_worker_probes_before_it_takes_jobs_and_a_configured_kind_needs_no_probe() -> None:
    from worker.inference.tempering import LogprobKindCache

    answers = iter([fixture("probe_T1_0.json"), fixture("probe_T0_25.json")])
    assert "tempered" == LogprobKindCache("auto", lambda _b: next(answers)).probe_now()
    never = LogprobKindCache("original", lambda _b: pytest.fail("probed"))  # type: ignore[arg-type,return-value]
    assert ("original", "original") == (never.probe_now(), never.kind())
