"""The inference backend interface every backend (SGLang over HTTP, local transformers) implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas.events import ModelInfo
from schemas.verdict import Verdict
from worker.image import PreparedImage


@dataclass(frozen=True)
class InferenceRequest:
    """One image under one policy text; ``rid`` identifies the request on the server (for aborts and logs)."""

    image: PreparedImage
    policy_text: str
    rid: str
    with_rationale: bool = True
    want_score: bool = False


@dataclass(frozen=True)
class InferenceResult:
    """The parsed verdict plus what the server reported about the generation."""

    verdict: Verdict
    raw_text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class InferenceBackend(Protocol):
    """Runs LlavaGuard on one prepared image; raises TransientError/PermanentError from schemas.errors."""

    def infer(self, request: InferenceRequest) -> InferenceResult: ...

    def describe(self) -> ModelInfo: ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...
