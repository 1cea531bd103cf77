"""The SGLang client against the SGLang-protocol test server over real HTTP (no queue involved)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemas.errors import PermanentError, TransientError
from schemas.models import get_model
from schemas.policy import Policy
from schemas.settings import Settings
from schemas.taxonomy import PromptVersion
from tests import images
from tests.sglang_server import SimulatedSGLang
from worker.image import prepare_image
from worker.inference.base import InferenceRequest
from worker.inference.sglang import SGLangBackend


@pytest.fixture
def backend(sim: SimulatedSGLang) -> Iterator[SGLangBackend]:
    settings = Settings(sglang_url=sim.url, sglang_timeout_s=1.0, worker_concurrency=4)
    client = SGLangBackend(settings, get_model("AIML-TUDA/LlavaGuard-7B"))
    yield client
    client.close()


def request(color: tuple[int, int, int] = (40, 120, 200), **kw: object) -> InferenceRequest:
    prepared = prepare_image(images.solid(color), max_side=336, max_pixels=10**8)
    return InferenceRequest(image=prepared, policy_text=Policy().text(PromptVersion.V1_0), rid="t.1", **kw)  # type: ignore[arg-type]


def test_a_request_yields_a_verdict_and_the_body_has_the_fixed_shape(
    backend: SGLangBackend, sim: SimulatedSGLang
) -> None:
    result = backend.infer(request((220, 30, 30), want_score=True))
    assert ("Unsafe", "O2") == (result.verdict.rating, result.verdict.category_code)
    assert result.verdict.unsafe_score is not None and result.verdict.unsafe_score > 0.9
    [seen] = sim.chat_requests()
    assert ["image_url", "text"] == seen["body"]["part_types"]
    assert ["user"] == seen["body"]["roles"]
    assert seen["rid"].startswith("t.1.")
    assert (True, 20) == (seen["body"]["logprobs"], seen["body"]["top_logprobs"])
    assert "detempered" == result.verdict.score_method  # the test server, like SGLang by default, tempers them


def test_verdict_only_requests_omit_the_rationale_from_the_schema(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    result = backend.infer(request(with_rationale=False))
    assert result.verdict.rationale is None
    schema = sim.chat_requests()[0]["body"]["response_format"]["json_schema"]["schema"]
    assert ["rating", "category"] == list(schema["properties"])


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_transient(backend: SGLangBackend, sim: SimulatedSGLang, status: int) -> None:
    sim.add_faults({"status": status, "retry_after": 7})
    with pytest.raises(TransientError) as info:
        backend.infer(request())
    assert ("inference_unavailable", 7.0) == (info.value.code, info.value.retry_after)


def test_a_400_is_a_permanent_rejection(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    sim.add_faults({"status": 400, "message": "Requested token count exceeds the model's maximum context length"})
    with pytest.raises(PermanentError, match="maximum context length") as info:
        backend.infer(request())
    assert "inference_rejected" == info.value.code


def test_a_hang_past_the_client_timeout_is_a_transient_timeout(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    sim.add_faults({"kind": "hang", "seconds": 5})
    with pytest.raises(TransientError) as info:
        backend.infer(request())
    assert "inference_timeout" == info.value.code


def test_a_dropped_connection_is_transient(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    sim.add_faults({"kind": "drop"})
    with pytest.raises(TransientError):
        backend.infer(request())


def test_connection_refused_is_transient_unavailable() -> None:
    settings = Settings(sglang_url="http://127.0.0.1:9", sglang_connect_timeout_s=0.5)
    client = SGLangBackend(settings, get_model("AIML-TUDA/LlavaGuard-7B"))
    with pytest.raises(TransientError) as info:
        client.infer(request())
    assert "inference_unavailable" == info.value.code
    assert client.ready() is False


def test_invalid_output_is_re_requested_once_under_a_fresh_rid(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    sim.add_faults({"kind": "length"})  # the budget ran out inside the category: nothing to keep
    assert "Safe" == backend.infer(request()).verdict.rating
    first, second = (r["rid"] for r in sim.chat_requests())
    assert (True, True) == (first.startswith("t.1."), second.startswith("t.1.r2."))


def test_two_calls_for_the_same_job_in_flight_at_once_both_succeed(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    """Real SGLang answers 400 "Duplicate request ID" to a rid already in flight; each call has its own rid."""
    from concurrent.futures import ThreadPoolExecutor

    sim.configure(latency_s=0.3)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: backend.infer(request()), range(2)))
    assert ["Safe", "Safe"] == [r.verdict.rating for r in results]
    rids = [r["rid"] for r in sim.chat_requests()]
    assert 2 == len(set(rids))


def test_the_test_server_refuses_a_rid_already_in_flight_like_sglang(sim: SimulatedSGLang) -> None:
    import httpx

    from worker.inference.sglang import SGLangBackend as Backend

    sim.configure(latency_s=0.3)
    body = Backend(Settings(sglang_url=sim.url), get_model("AIML-TUDA/LlavaGuard-7B")).build_body(request())
    body["rid"] = "dup-rid-1"
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(lambda _: httpx.post(f"{sim.url}/v1/chat/completions", json=body, timeout=5), range(2)), key=lambda r: r.status_code)
    assert [200, 400] == [r.status_code for r in codes]
    assert "Duplicate request ID detected: dup-rid-1" == codes[1].json()["message"]


def test_a_rationale_cut_by_the_token_budget_keeps_the_verdict(sim: SimulatedSGLang) -> None:
    """A long rationale and few tokens: finish_reason length after rating and category — kept, not retried."""
    settings = Settings(sglang_url=sim.url, max_new_tokens=40, rationale_max_chars=4000)
    sim.configure(rationale_chars=4000)
    client = SGLangBackend(settings, get_model("AIML-TUDA/LlavaGuard-7B"))
    try:
        verdict = client.infer(request((220, 30, 30))).verdict
    finally:
        client.close()
    assert ("Unsafe", "O2", True) == (verdict.rating, verdict.category_code, verdict.rationale_truncated)
    assert verdict.rationale
    assert 1 == len(sim.chat_requests())


def test_the_default_rationale_length_fits_the_default_token_budget(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    """A model that rambles to maxLength still closes the object within 500 tokens: nothing truncated."""
    sim.configure(rationale_chars=4000, control_chars=True)
    results = [backend.infer(request(want_score=True)) for _ in range(5)]
    schema = sim.chat_requests()[0]["body"]["response_format"]["json_schema"]["schema"]
    assert 399 == schema["properties"]["rationale"]["maxLength"]
    assert ["stop"] * 5 == [r.finish_reason for r in results]
    assert all(r.verdict.rationale_truncated is None and len(r.verdict.rationale or "") == 399 for r in results)


def test_describe_reports_the_served_model_and_readiness(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    info = backend.describe()
    assert ("sglang", True, "simulated/AIML-TUDA/LlavaGuard-7B") == (info.backend, info.simulated, info.served_model)
    assert backend.ready() is True
    sim.configure(ready=False)
    assert backend.ready() is False
