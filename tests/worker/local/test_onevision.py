"""The transformers backend on a tiny random LLaVA-OneVision checkpoint (the v1.2 OV architecture).

transformers builds the OneVision processor only with torchvision (its video processor). PyPI's torchvision does
not import beside the CPU torch wheel that ``make install`` uses, so these tests run where torchvision is
installed (for example ``pip install torch==2.14.1 torchvision==0.29.1`` here, or any GPU machine) and are
reported as skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "torchvision", reason="the OneVision processor needs torchvision (not installable beside CPU torch)"
)

from schemas.models import get_model
from schemas.policy import DEFAULT_POLICY
from schemas.taxonomy import CATEGORY_NAMES, RATINGS, PromptVersion
from tests.worker.local.conftest import prepared, tiny_settings, wait_ready
from tests.worker.local.tiny_models import build_tiny_onevision
from worker.inference.base import InferenceRequest, InferenceResult
from worker.inference.local import TransformersBackend

OV_MODEL = "AIML-TUDA/LlavaGuard-v1.2-0.5B-OV"
POLICY_TEXT = DEFAULT_POLICY.text(PromptVersion.V1_2)


@pytest.fixture(scope="module")
def ov_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersBackend]:
    path = build_tiny_onevision(tmp_path_factory.mktemp("tiny-ov") / "checkpoint")
    backend = TransformersBackend(
        tiny_settings(path, model=OV_MODEL, local_batch_wait_ms=1000, local_max_batch_size=3), get_model(OV_MODEL)
    )
    wait_ready(backend)
    yield backend
    backend.close()


def test_a_onevision_checkpoint_loads_as_llava_onevision(ov_backend: TransformersBackend) -> None:
    local = ov_backend.local_model
    assert local is not None
    assert "llava_onevision" == local.model_type
    assert "LlavaOnevisionForConditionalGeneration" == type(local.model).__name__


def test_the_chatml_prompt_puts_the_image_before_the_exact_policy_text(ov_backend: TransformersBackend) -> None:
    local = ov_backend.local_model
    assert local is not None
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<image>\n{POLICY_TEXT}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert expected == local.prompt_text(POLICY_TEXT)


def test_images_of_different_shapes_batch_together_and_each_gets_a_valid_verdict(
    ov_backend: TransformersBackend,
) -> None:
    """anyres gives each aspect ratio its own number of image tokens: the batch is left-padded to the longest."""
    sizes = [(64, 48), (30, 90), (120, 40)]
    results: list[InferenceResult | BaseException] = [RuntimeError("not run")] * len(sizes)
    barrier = threading.Barrier(len(sizes))

    def call(i: int) -> None:
        barrier.wait(10)
        try:
            image = prepared((50 * i, 100, 150), sizes[i])
            results[i] = ov_backend.infer(InferenceRequest(image=image, policy_text=POLICY_TEXT, rid=f"ov-{i}"))
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(sizes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for result in results:
        assert isinstance(result, InferenceResult), result
        assert result.verdict.rating in RATINGS and result.verdict.category in CATEGORY_NAMES
        assert isinstance(result.verdict.rationale, str)
    assert {len(sizes)} == {r.extra["batch_size"] for r in results if isinstance(r, InferenceResult)}


def test_describe_reports_the_onevision_checkpoint_path(ov_backend: TransformersBackend) -> None:
    info = ov_backend.describe()
    assert ("transformers", OV_MODEL, PromptVersion.V1_2) == (info.backend, info.name, info.prompt_version)
    assert info.served_model is not None and Path(info.served_model).name == "checkpoint"
