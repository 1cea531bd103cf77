"""The model registry: every released checkpoint with its chat template, tokenizer and prompt version."""

from __future__ import annotations

import pytest

from schemas.errors import PermanentError
from schemas.job import Priority
from schemas.keys import queue_name
from schemas.models import MODELS, get_model
from schemas.taxonomy import PromptVersion


@pytest.mark.parametrize(
    ("name", "template", "version"),
    [
        ("AIML-TUDA/LlavaGuard-7B", "vicuna_v1.1", PromptVersion.V1_0),
        ("AIML-TUDA/LlavaGuard-13B", "vicuna_v1.1", PromptVersion.V1_0),
        ("AIML-TUDA/LlavaGuard-34B", "chatml-llava", PromptVersion.V1_0),
        ("AIML-TUDA/LlavaGuard-v1.1-7B-hf", "vicuna_v1.1", PromptVersion.V1_1),
        ("AIML-TUDA/LlavaGuard-v1.1-13B-hf", "vicuna_v1.1", PromptVersion.V1_1),
        ("AIML-TUDA/LlavaGuard-v1.2-0.5B-OV", "chatml-llava", PromptVersion.V1_2),
        ("AIML-TUDA/LlavaGuard-v1.2-7B-OV", "chatml-llava", PromptVersion.V1_2),
    ],
)
def test_each_checkpoint_has_its_trained_template_and_prompt_version(
    name: str, template: str, version: PromptVersion
) -> None:
    spec = MODELS[name]
    assert (template, version) == (spec.chat_template, spec.prompt_version)


def test_launch_args_always_name_the_chat_template_and_the_seed_tokenizer() -> None:
    args = get_model("AIML-TUDA/LlavaGuard-7B").sglang_launch_args(port=10000)
    assert ["--tokenizer-path", "llava-hf/llava-1.5-7b-hf"] == args[args.index("--tokenizer-path") :][:2]
    assert "vicuna_v1.1" == args[args.index("--chat-template") + 1]
    assert "2" == get_model("AIML-TUDA/LlavaGuard-34B").sglang_launch_args()[-1]


def test_aliases_and_slugs_resolve_and_unknown_names_fail_as_model_unknown() -> None:
    assert "AIML-TUDA/LlavaGuard-7B" == get_model("AIML-TUDA/LlavaGuard-v1.0-7B").name
    assert "AIML-TUDA/LlavaGuard-7B" == get_model("llavaguard-7b").name
    with pytest.raises(PermanentError) as info:
        get_model("gpt-4o")
    assert "model_unknown" == info.value.code


def test_each_model_has_an_interactive_and_a_bulk_queue() -> None:
    spec = get_model("AIML-TUDA/LlavaGuard-34B")
    assert "guardq.llavaguard-34b" == queue_name(spec)
    assert "guardq.llavaguard-34b.bulk" == queue_name(spec, Priority.BULK)


def test_the_base_image_detail_sends_one_base_tile() -> None:
    assert (336, 336) == (
        get_model("AIML-TUDA/LlavaGuard-7B").image_side("base"),
        get_model("AIML-TUDA/LlavaGuard-7B").image_side("native"),
    )
    assert (336, 1008) == (
        get_model("AIML-TUDA/LlavaGuard-34B").image_side("base"),
        get_model("AIML-TUDA/LlavaGuard-34B").image_side("native"),
    )
    assert (384, 1152) == (
        get_model("AIML-TUDA/LlavaGuard-v1.2-7B-OV").image_side("base"),
        get_model("AIML-TUDA/LlavaGuard-v1.2-7B-OV").image_side("native"),
    )
