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
    assert "t.1" == seen["rid"]
    assert seen["body"]["logprobs"] is True


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


def test_invalid_output_is_re_requested_once(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    sim.add_faults({"kind": "length"})
    assert "Safe" == backend.infer(request()).verdict.rating
    assert ["t.1", "t.1.r2"] == [r["rid"] for r in sim.chat_requests()]


def test_describe_reports_the_served_model_and_readiness(backend: SGLangBackend, sim: SimulatedSGLang) -> None:
    info = backend.describe()
    assert ("sglang", True, "simulated/AIML-TUDA/LlavaGuard-7B") == (info.backend, info.simulated, info.served_model)
    assert backend.ready() is True
    sim.configure(ready=False)
    assert backend.ready() is False
