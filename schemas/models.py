"""The model registry: every released LlavaGuard checkpoint guardq knows how to serve.

Each entry says how to launch SGLang for it (chat template, tokenizer, tensor parallelism), which prompt version
it was trained on, how large an image its vision tower can use, and which ``-hf`` checkpoint the local
transformers backend loads. Facts come from ../shared/reference/llavaguard.md §1 and §3.1.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from schemas.errors import ErrorCode, PermanentError
from schemas.taxonomy import PromptVersion


class ModelSpec(BaseModel):
    """How to serve and prompt one LlavaGuard checkpoint."""

    model_config = ConfigDict(frozen=True)

    name: str
    chat_template: str
    tokenizer_path: str | None
    prompt_version: PromptVersion
    image_max_side: int
    context_length: int
    # The vision tower's own input side: an image no larger than this is one base tile (LLaVA-1.5/1.6: CLIP-336,
    # OneVision: SigLIP-384). A policy's ``image_detail: base`` sends images this size (fewer tiles, fewer tokens).
    base_image_side: int = 336
    tp: int = 1
    hf_checkpoint: str | None = None
    aliases: tuple[str, ...] = ()
    notes: str = ""

    def sglang_launch_args(self, *, port: int = 10000, host: str = "127.0.0.1") -> list[str]:
        """``python -m sglang.launch_server`` arguments for this checkpoint (chat template always explicit)."""
        return ["python", "-m", "sglang.launch_server", *self.sglang_server_args(port=port, host=host)]

    def sglang_server_args(
        self,
        *,
        port: int,
        host: str = "127.0.0.1",
        tp: int | None = None,
        model_path: str | None = None,
        tokenizer_path: str | None = None,
    ) -> list[str]:
        """The model's server flags alone (``--model-path`` ... ``--tp``); ``tp`` overrides the registry's and the
        paths replace the hub ids (pre-staged weights)."""
        args = ["--model-path", model_path or self.name]
        if tokenizer_path or self.tokenizer_path:
            args += ["--tokenizer-path", tokenizer_path or self.tokenizer_path or ""]
        args += ["--chat-template", self.chat_template, "--host", host, "--port", str(port)]
        tp = tp or self.tp
        if tp > 1:
            args += ["--tp", str(tp)]
        return args

    def image_side(self, detail: str) -> int:
        """Longest side sent to the model at an image-detail level: ``native`` (what the processor can use) or
        ``base`` (the base tile's side: the anyres processors then pick their smallest grid, which is two tiles plus the
        base image for LLaVA-1.6 and one tile plus the base image for OneVision; docs/performance.md counts them)."""
        return self.base_image_side if detail == "base" else self.image_max_side

    @property
    def slug(self) -> str:
        """Short lower-case name used in queue names and metrics labels."""
        tail = self.name.rsplit("/", 1)[-1]
        return re.sub(r"[^a-z0-9.]+", "-", tail.lower()).strip("-")


# LLaVA-1.5 (CLIP-L/336, "pad"): the processor pads to a square and resizes to 336 px, so a longer side is wasted.
# LLaVA-1.6-34B ("anyres", grids up to 672x672 / 1008x336) and OneVision ("anyres_max_9", SigLIP-384 tiles,
# features pooled past 3x3 tiles) use at most about 1008 / 1152 px on the long side.
_REGISTRY: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="AIML-TUDA/LlavaGuard-7B",
        aliases=("AIML-TUDA/LlavaGuard-v1.0-7B",),
        chat_template="vicuna_v1.1",
        tokenizer_path="llava-hf/llava-1.5-7b-hf",
        prompt_version=PromptVersion.V1_0,
        image_max_side=336,
        context_length=4096,
        hf_checkpoint="AIML-TUDA/LlavaGuard-v1.0-7B-hf",
    ),
    ModelSpec(
        name="AIML-TUDA/LlavaGuard-13B",
        aliases=("AIML-TUDA/LlavaGuard-v1.0-13B",),
        chat_template="vicuna_v1.1",
        tokenizer_path="llava-hf/llava-1.5-13b-hf",
        prompt_version=PromptVersion.V1_0,
        image_max_side=336,
        context_length=4096,
        hf_checkpoint="AIML-TUDA/LlavaGuard-v1.0-13B-hf",
    ),
    ModelSpec(
        name="AIML-TUDA/LlavaGuard-34B",
        chat_template="chatml-llava",
        tokenizer_path="liuhaotian/llava-v1.6-34b-tokenizer",
        prompt_version=PromptVersion.V1_0,
        image_max_side=1008,
        context_length=4096,
        tp=2,
        notes="About 69 GB of bf16 weights: two 80 GB GPUs (--tp 2).",
    ),
    ModelSpec(
        name="AIML-TUDA/LlavaGuard-v1.1-7B-hf",
        chat_template="vicuna_v1.1",
        tokenizer_path=None,
        prompt_version=PromptVersion.V1_1,
        image_max_side=336,
        context_length=4096,
        hf_checkpoint="AIML-TUDA/LlavaGuard-v1.1-7B-hf",
        notes="Released in transformers (LlavaForConditionalGeneration) format only.",
    ),
    ModelSpec(
        name="AIML-TUDA/LlavaGuard-v1.1-13B-hf",
        chat_template="vicuna_v1.1",
        tokenizer_path=None,
        prompt_version=PromptVersion.V1_1,
        image_max_side=336,
        context_length=4096,
        hf_checkpoint="AIML-TUDA/LlavaGuard-v1.1-13B-hf",
        notes="Released in transformers (LlavaForConditionalGeneration) format only.",
    ),
    ModelSpec(
        name="AIML-TUDA/LlavaGuard-v1.2-0.5B-OV",
        chat_template="chatml-llava",
        tokenizer_path=None,
        prompt_version=PromptVersion.V1_2,
        image_max_side=1152,
        base_image_side=384,
        context_length=32768,
        hf_checkpoint="AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf",
    ),
    ModelSpec(
        name="AIML-TUDA/LlavaGuard-v1.2-7B-OV",
        chat_template="chatml-llava",
        tokenizer_path=None,
        prompt_version=PromptVersion.V1_2,
        image_max_side=1152,
        base_image_side=384,
        context_length=32768,
        hf_checkpoint="AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf",
    ),
)

DEFAULT_MODEL = "AIML-TUDA/LlavaGuard-7B"
MODELS: dict[str, ModelSpec] = {m.name: m for m in _REGISTRY}
_LOOKUP: dict[str, ModelSpec] = {
    key.lower(): m
    for m in _REGISTRY
    for key in (m.name, *m.aliases, m.slug, *(a.rsplit("/", 1)[-1] for a in m.aliases))
}


def get_model(name: str) -> ModelSpec:
    """Return the registry entry for a model name, alias or slug; raise ``model_unknown`` otherwise."""
    spec = _LOOKUP.get(name.lower()) or _LOOKUP.get(name.rsplit("/", 1)[-1].lower())
    if spec is None:
        raise PermanentError(f"unknown model {name!r}; known: {', '.join(MODELS)}", code=ErrorCode.MODEL_UNKNOWN)
    return spec
