"""Load a LlavaGuard ``-hf`` checkpoint with transformers and run one padded batch of verdict generations.

v1.0/v1.1 checkpoints are ``LlavaForConditionalGeneration`` (LLaVA-1.5), v1.2 OV checkpoints are
``LlavaOnevisionForConditionalGeneration``; the class is chosen from the checkpoint's ``config.json``. The prompt
is the checkpoint's own chat template applied by its processor to one user turn: the image, then the policy text.
Sampling uses guardq's settings (the seed's temperature 0.2, top_p 0.95, top_k 50); the output is held to the
verdict grammar by xgrammar's transformers logits processor.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, GenerationConfig, LogitsProcessorList

from schemas.errors import ConfigError
from schemas.models import ModelSpec
from schemas.settings import Settings
from worker.inference.constrain import RatingScoreObserver, VerdictGrammar

log = structlog.get_logger(__name__)

# config.model_type → transformers class name; each released -hf checkpoint is one of these.
MODEL_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}


@dataclass(frozen=True)
class Prompt:
    """What one batch row needs: the prepared image bytes, the policy text and per-request options."""

    image: bytes
    policy_text: str
    with_rationale: bool
    want_score: bool
    # Continue the assistant's answer from this text (a verdict, for its rationale: worker.inference.continuation);
    # the row's grammar is then the rationale string's.
    prefix: str | None = None


@dataclass(frozen=True)
class Generation:
    """One row's output: text (special tokens removed), why it stopped, token counts, P(Unsafe) if asked."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    unsafe_score: float | None
    batch_size: int
    generate_ms: float


def checkpoint_path(settings: Settings, model: ModelSpec) -> str:
    """``GUARDQ_LOCAL_MODEL_PATH`` if set, else the registry's ``-hf`` checkpoint; a clear error if neither."""
    path = settings.local_model_path or model.hf_checkpoint
    if not path:
        raise ConfigError(
            f"{model.name} has no transformers (-hf) checkpoint; set GUARDQ_LOCAL_MODEL_PATH to one "
            "or use GUARDQ_BACKEND=sglang"
        )
    return path


def select_device(requested: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit ``cuda`` without a GPU is a configuration error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"GUARDQ_LOCAL_DEVICE={requested} but torch sees no CUDA device")
    return torch.device(requested)


def model_class_for(config: Any) -> Any:
    """The transformers model class for a checkpoint config (by ``model_type``, then ``architectures``)."""
    import transformers

    name = MODEL_CLASSES.get(getattr(config, "model_type", ""))
    if name is None:
        known = set(MODEL_CLASSES.values())
        name = next((a for a in getattr(config, "architectures", None) or [] if a in known), None)
    if name is None:
        raise ConfigError(
            f"unsupported checkpoint type {getattr(config, 'model_type', '?')!r}: the local backend serves "
            f"LlavaGuard -hf checkpoints ({', '.join(sorted(MODEL_CLASSES))})"
        )
    return getattr(transformers, name)


def _id_list(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


class LocalModel:
    """A loaded checkpoint: model, processor, grammar and generation settings; used by one thread at a time."""

    def __init__(self, settings: Settings, model: ModelSpec) -> None:
        started = time.perf_counter()
        self.settings = settings
        self.path = checkpoint_path(settings, model)
        self.device = select_device(settings.local_device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        config = AutoConfig.from_pretrained(self.path)
        self.model_type = str(config.model_type)
        cls = model_class_for(config)
        self.model = cls.from_pretrained(self.path, dtype=self.dtype).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(self.path)  # type: ignore[no-untyped-call]
        if not getattr(self.processor, "chat_template", None):
            raise ConfigError(f"checkpoint {self.path} ships no chat template; guardq applies the model's own")
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        stop_ids = _id_list(self.model.generation_config.eos_token_id) or _id_list(tokenizer.eos_token_id)
        if not stop_ids:
            raise ConfigError(f"checkpoint {self.path} defines no end-of-sequence token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(stop_ids[0])
        self.stop_ids = stop_ids
        self.pad_id = int(tokenizer.pad_token_id)
        self.tokenizer = tokenizer
        vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.grammar = VerdictGrammar(
            tokenizer,
            vocab_size=vocab_size,
            stop_token_ids=stop_ids,
            rationale_max_chars=settings.rationale_chars(),
        )
        self.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=settings.temperature > 0,
            temperature=settings.temperature if settings.temperature > 0 else None,
            top_p=settings.top_p if settings.temperature > 0 else None,
            top_k=settings.top_k if settings.temperature > 0 else None,
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=self.pad_id,
        )
        log.info(
            "local_model_loaded",
            path=self.path,
            model_type=self.model_type,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            seconds=round(time.perf_counter() - started, 2),
        )

    def prompt_text(self, policy_text: str) -> str:
        """The model's chat template applied to one user turn: the image first, then the policy text."""
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": policy_text}]},
        ]
        text: str = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return text

    def warm_up(self) -> None:
        """One short generation so the first job does not pay for kernel set-up (seconds on a cold CPU or GPU)."""
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, "PNG")
        self.generate([Prompt(buffer.getvalue(), "Describe the image.", True, True)], max_new_tokens=8)

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int | None = None) -> list[Generation]:
        """Run ``prompts`` as one left-padded batch; one :class:`Generation` per prompt, in order."""
        images = [Image.open(io.BytesIO(p.image)).convert("RGB") for p in prompts]
        texts = [self.prompt_text(p.policy_text) + (p.prefix or "") for p in prompts]
        inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        prompt_length = int(inputs["input_ids"].shape[1])
        processors = LogitsProcessorList()
        observer = None
        if any(p.want_score for p in prompts):
            observer = RatingScoreObserver(self.grammar, prompt_length, [p.want_score for p in prompts])
            processors.append(observer)
        processors.append(
            self.grammar.processor(["rationale" if p.prefix is not None else p.with_rationale for p in prompts])
        )
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                generation_config=self.generation_config,
                logits_processor=processors,
                **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}),
            )
        generate_ms = round((time.perf_counter() - started) * 1000, 3)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        new_tokens = sequences[:, prompt_length:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, tokens in enumerate(new_tokens):
            stop_at = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
            kept = tokens if stop_at is None else tokens[:stop_at]
            results.append(
                Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    finish_reason="length" if stop_at is None else "stop",
                    prompt_tokens=int(prompt_tokens[row]),
                    completion_tokens=len(kept) + (0 if stop_at is None else 1),
                    unsafe_score=observer.scores[row] if observer is not None else None,
                    batch_size=len(prompts),
                    generate_ms=generate_ms,
                )
            )
        return results
