"""The inference backend interface every backend (SGLang over HTTP, local transformers) implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas.events import ModelInfo
from schemas.verdict import Verdict
from worker.image import PreparedImage


@dataclass(frozen=True)
class InferenceRequest:
    """One image under one policy text; ``rid`` identifies the request on the server (for aborts and logs).

    ``flagged_only`` (a policy's ``rationale: flagged``): generate the verdict first and the rationale only for an
    Unsafe verdict or a Safe one whose P(Unsafe) reaches ``unsafe_threshold``, continued from the verdict text.
    """

    image: PreparedImage
    policy_text: str
    rid: str
    with_rationale: bool = True
    want_score: bool = False
    flagged_only: bool = False
    unsafe_threshold: float | None = None

    def flagged(self, verdict: Verdict) -> bool:
        """Whether a verdict earns its rationale under ``flagged_only``."""
        if verdict.rating == "Unsafe":
            return True
        return (
            self.unsafe_threshold is not None
            and verdict.unsafe_score is not None
            and verdict.unsafe_score >= self.unsafe_threshold
        )


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
