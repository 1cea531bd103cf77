"""The transformers backend on a tiny random LLaVA checkpoint: real loading, chat template, grammar, batching.

The weights are random, so the verdict's content is noise; what is specified is its structure (valid verdict
JSON in the trained layout, every time) and the backend's behaviour around it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from schemas.errors import ConfigError, ErrorCode, PermanentError, TransientError
from schemas.models import get_model
from schemas.policy import DEFAULT_POLICY, Declaration, Policy
from schemas.taxonomy import CATEGORY_NAMES, RATINGS, PromptVersion
from tests.worker.local.conftest import TINY_MODEL, prepared, tiny_settings, wait_ready
from worker.image import PreparedImage
from worker.inference.base import InferenceRequest, InferenceResult
from worker.inference.local import TransformersBackend

POLICY_TEXT = DEFAULT_POLICY.text(PromptVersion.V1_1)
# Batching tests: a window far longer than the callers need to arrive; the batch closes when it is full.
WINDOW_MS = 1000.0
# json.dumps(indent=4) of a verdict; the rationale may hold raw control characters (not CR/LF), never escapes.
TRAINED_LAYOUT = {
    True: re.compile(
        r'\{\n    "rating": "(Safe|Unsafe)",\n    "category": "[^"]+",\n    "rationale": "[^"\\\r\n]*"\n\}'
    ),
    False: re.compile(r'\{\n    "rating": "(Safe|Unsafe)",\n    "category": "[^"]+"\n\}'),
}


def request(rid: str, image: PreparedImage | None = None, **kw: Any) -> InferenceRequest:
    return InferenceRequest(image=image or prepared(), policy_text=kw.pop("policy_text", POLICY_TEXT), rid=rid, **kw)


def assert_trained_layout(result: InferenceResult, *, with_rationale: bool = True) -> None:
    """The raw text is exactly ``json.dumps(indent=4)`` of the verdict, the layout LlavaGuard was trained on."""
    payload = json.loads(result.raw_text, strict=False)
    assert ["rating", "category", "rationale"][: 3 if with_rationale else 2] == list(payload)
    assert TRAINED_LAYOUT[with_rationale].fullmatch(result.raw_text), repr(result.raw_text)
    assert result.verdict.rating in RATINGS
    assert result.verdict.category in CATEGORY_NAMES
    assert (result.verdict.rationale is not None) is with_rationale


def run_concurrently(fn: Callable[[int], InferenceResult], count: int) -> list[InferenceResult | BaseException]:
    barrier = threading.Barrier(count)
    out: list[InferenceResult | BaseException] = [RuntimeError("not run")] * count

    def call(i: int) -> None:
        barrier.wait(10)
        try:
            out[i] = fn(i)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return out


def test_the_tiny_checkpoint_loads_as_llava_on_the_cpu_in_float32(tiny_backend: TransformersBackend) -> None:
    local = tiny_backend.local_model
    assert local is not None
    assert "llava" == local.model_type
    assert "LlavaForConditionalGeneration" == type(local.model).__name__
    assert torch.device("cpu") == local.device
    assert torch.float32 == local.dtype


def test_the_prompt_is_the_models_own_chat_template_with_the_image_before_the_exact_policy_text(
    tiny_backend: TransformersBackend,
) -> None:
    local = tiny_backend.local_model
    assert local is not None
    assert f"USER: <image>\n{POLICY_TEXT} ASSISTANT:" == local.prompt_text(POLICY_TEXT)


def test_every_generation_is_a_valid_verdict_in_the_trained_json_layout(tiny_backend: TransformersBackend) -> None:
    """Sixteen images, sequential and concurrent: the random model's verdict is well-formed every time."""
    results = [tiny_backend.infer(request(f"seq-{i}", prepared((60 * i, 90, 30), (50 + 20 * i, 40)))) for i in range(4)]
    results += run_concurrently(
        lambda i: tiny_backend.infer(request(f"par-{i}", prepared((20 * i, 255 - 20 * i, 128), (30 + 9 * i, 64)))), 12
    )
    for result in results:
        assert isinstance(result, InferenceResult), result
        assert "stop" == result.finish_reason
        assert_trained_layout(result)
        assert result.prompt_tokens is not None and result.prompt_tokens > 100
        assert result.completion_tokens is not None and result.completion_tokens > 0


def test_a_requested_score_is_the_probability_of_unsafe_at_the_rating_token(
    tiny_backend: TransformersBackend,
) -> None:
    scored = tiny_backend.infer(request("score", want_score=True))
    unscored = tiny_backend.infer(request("no-score", want_score=False))
    assert scored.verdict.unsafe_score is not None and 0.0 <= scored.verdict.unsafe_score <= 1.0
    assert unscored.verdict.unsafe_score is None


def test_a_verdict_only_request_gets_rating_and_category_without_rationale(
    tiny_backend: TransformersBackend,
) -> None:
    result = tiny_backend.infer(request("verdict-only", with_rationale=False))
    assert_trained_layout(result, with_rationale=False)


def test_concurrent_requests_are_generated_in_one_padded_batch(tiny_llava_dir: Path) -> None:
    """Six callers inside a wide batching window: one ``generate`` call with all six rows, each its own answer."""
    backend = TransformersBackend(
        tiny_settings(tiny_llava_dir, local_batch_wait_ms=WINDOW_MS, local_max_batch_size=6), get_model(TINY_MODEL)
    )
    try:
        wait_ready(backend)
        local = backend.local_model
        assert local is not None
        calls: list[int] = []
        real_generate = local.model.generate

        def counting_generate(**kwargs: Any) -> Any:
            calls.append(int(kwargs["input_ids"].shape[0]))
            return real_generate(**kwargs)

        local.model.generate = counting_generate
        custom = Policy(name="o9-ok", declarations={"O9": Declaration.NON_VIOLATING}, verdict_only=True)
        results = run_concurrently(
            lambda i: backend.infer(
                request(
                    f"batch-{i}",
                    prepared((i * 40, 90, 200 - i * 30), (30 + 17 * i, 64)),  # different sizes and policies
                    policy_text=custom.text(PromptVersion.V1_1) if i % 2 else POLICY_TEXT,
                    with_rationale=i % 2 == 0,
                    want_score=i % 3 == 0,
                )
            ),
            6,
        )
    finally:
        backend.close()
    assert [6] == calls
    for i, result in enumerate(results):
        assert isinstance(result, InferenceResult), result
        assert 6 == result.extra["batch_size"]
        assert_trained_layout(result, with_rationale=i % 2 == 0)
        assert (result.verdict.unsafe_score is not None) is (i % 3 == 0)


def test_an_undecodable_image_fails_alone_and_its_batch_neighbours_still_get_verdicts(tiny_llava_dir: Path) -> None:
    backend = TransformersBackend(
        tiny_settings(tiny_llava_dir, local_batch_wait_ms=WINDOW_MS, local_max_batch_size=3), get_model(TINY_MODEL)
    )
    good = prepared()
    broken = PreparedImage(**{**good.__dict__, "payload": b"not an image at all"})
    try:
        wait_ready(backend)
        results = run_concurrently(lambda i: backend.infer(request(f"iso-{i}", broken if i == 1 else good)), 3)
    finally:
        backend.close()
    assert isinstance(results[1], PermanentError)
    assert ErrorCode.INFERENCE_REJECTED == results[1].code
    assert isinstance(results[0], InferenceResult) and isinstance(results[2], InferenceResult)


def test_out_of_memory_splits_the_batch_until_it_fits(tiny_llava_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than two rows 'does not fit' (injected); the backend halves it and every caller is served."""
    backend = TransformersBackend(
        tiny_settings(tiny_llava_dir, local_batch_wait_ms=WINDOW_MS, local_max_batch_size=4), get_model(TINY_MODEL)
    )
    try:
        wait_ready(backend)
        local = backend.local_model
        assert local is not None
        sizes: list[int] = []
        real = local.generate

        def small_memory(prompts: Any) -> Any:
            sizes.append(len(prompts))
            if len(prompts) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return real(prompts)

        monkeypatch.setattr(local, "generate", small_memory)
        results = run_concurrently(lambda i: backend.infer(request(f"oom-{i}")), 4)
    finally:
        backend.close()
    assert [4, 2, 2] == sizes
    assert all(isinstance(r, InferenceResult) for r in results), results


def test_output_cut_by_the_token_budget_is_regenerated_then_fails_as_invalid_model_output(
    tiny_llava_dir: Path,
) -> None:
    """16 new tokens cannot hold the verdict skeleton: one retry (the default), then ``invalid_model_output``."""
    backend = TransformersBackend(
        tiny_settings(tiny_llava_dir, max_new_tokens=16, rationale_max_chars=4000), get_model(TINY_MODEL)
    )
    try:
        wait_ready(backend)
        with pytest.raises(PermanentError) as caught:
            backend.infer(request("too-short"))
        assert 2 == backend.batches_run
    finally:
        backend.close()
    assert ErrorCode.INVALID_MODEL_OUTPUT == caught.value.code


def test_describe_names_the_transformers_backend_and_the_checkpoint_path(
    tiny_backend: TransformersBackend, tiny_llava_dir: Path
) -> None:
    info = tiny_backend.describe()
    assert ("transformers", str(tiny_llava_dir), TINY_MODEL) == (info.backend, info.served_model, info.name)
    assert PromptVersion.V1_1 == info.prompt_version
    assert info.simulated is False


def test_a_checkpoint_that_cannot_load_is_never_ready_and_requests_fail_transiently(tmp_path: Path) -> None:
    backend = TransformersBackend(
        tiny_settings(tmp_path, local_model_path=str(tmp_path / "missing")), get_model(TINY_MODEL)
    )
    try:
        with pytest.raises(TransientError) as caught:
            backend.infer(request("no-model"))
        with pytest.raises(ConfigError, match="missing"):
            backend.ready()
    finally:
        backend.close()
    assert ErrorCode.INFERENCE_UNAVAILABLE == caught.value.code


def test_a_flagged_verdict_gets_its_rationale_continued_in_the_trained_layout(tiny_llava_dir: Path) -> None:
    """rationale: flagged on the local backend: the verdict first, then the rationale continued from its text; the
    joined text is the one-pass trained layout. A threshold every score reaches flags every verdict."""
    backend = TransformersBackend(tiny_settings(tiny_llava_dir), get_model(TINY_MODEL))
    try:
        wait_ready(backend)
        result = backend.infer(request("flag-1", want_score=True, flagged_only=True, unsafe_threshold=1e-9))
        batches = backend.batches_run
    finally:
        backend.close()
    assert "continued" == result.extra["rationale_step"]
    assert 2 == batches  # the verdict, then the continuation
    assert_trained_layout(result)


def test_an_unflagged_safe_verdict_gets_no_rationale_and_no_second_generation(tiny_llava_dir: Path) -> None:
    backend = TransformersBackend(tiny_settings(tiny_llava_dir), get_model(TINY_MODEL))
    try:
        wait_ready(backend)
        results = [backend.infer(request(f"unflag-{i}", want_score=True, flagged_only=True, unsafe_threshold=1.0)) for i in range(4)]
        batches = backend.batches_run
    finally:
        backend.close()
    safe = [r for r in results if r.verdict.rating == "Safe" and (r.verdict.unsafe_score or 0) < 1.0]
    assert all(r.verdict.rationale is None and r.extra["rationale_step"] == "skipped" for r in safe)
    continued = sum(1 for r in results if r.extra["rationale_step"] == "continued")
    assert len(results) + continued == batches
