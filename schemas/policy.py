"""Safety policies: the default LlavaGuard policy and custom ones, rendered to the exact trained prompt text.

Rendering follows LlavaGuard's own construction: the start sentence, then per category ``"<name>: \\n"`` plus the
chosen text block plus ``"\\n"`` (a blank line between categories), then the version's response template. As in
training (LLaVA's ``preprocess_multimodal``), the literal ``<image>`` is removed and the text stripped, because
the image goes first as its own message part. Categories are never removed; the JSON template always lists all ten.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.policy_text import render_policy_text
from schemas.taxonomy import (
    CATEGORY_BY_CODE,
    Declaration,
    PromptVersion,
)

PolicyName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
BUILTIN_POLICY_NAME = "default"  # the trained default policy; a stored policy cannot take this name
SENSITIVE_WARNING = (
    "'sensitive' declarations are outside the released LlavaGuard checkpoints' training data "
    "(only 'non_violating' was trained); expect unreliable verdicts for those categories"
)


def parse_policy_ref(ref: str) -> tuple[str, int | None]:
    """Split ``name`` or ``name@version`` into its parts; raise ValueError for a malformed reference."""
    name, sep, version = ref.strip().partition("@")
    if not name:
        raise ValueError(f"policy reference {ref!r} names no policy")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"policy reference {ref!r}: the version after '@' must be a positive integer")
    return name, int(version)


RationaleMode = Literal["always", "flagged", "never"]
ImageDetail = Literal["native", "base"]


class Policy(BaseModel):
    """A safety policy: a name, an immutable version and per-category declarations.

    ``prompt_version`` pins the policy to one training template; ``None`` means "the model's own".
    ``unsafe_threshold``: a Safe verdict whose P(Unsafe) reaches it is routed for human review.
    ``first_frame_only``: moderate only the first frame of an animated image or video (cheaper, and blind to
    anything after it); by default every distinct sampled frame is moderated.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: PolicyName = "default"
    version: int = Field(default=1, ge=1)
    prompt_version: PromptVersion | None = None
    declarations: dict[str, Declaration] = Field(default_factory=dict)
    unsafe_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    verdict_only: bool = False
    # When the model writes a rationale: "always" (one pass, the trained output), "flagged" (the verdict first,
    # then, for Unsafe verdicts and Safe ones at or above unsafe_threshold, the rationale continued from exactly
    # that verdict text), "never" (verdict only; what verdict_only=true means).
    rationale: RationaleMode = "always"
    # How much of the image the model sees: "native" (the checkpoint's own processing, default) or "base" (one base
    # tile: for LLaVA-1.6-34B and the v1.2 OneVision models far fewer image tokens; no change for v1.0/v1.1 7B/13B,
    # whose 336-px input is a single tile anyway). Cheaper bulk work; check its accuracy with guardq eval.
    image_detail: ImageDetail = "native"

    @property
    def rationale_mode(self) -> RationaleMode:
        return "never" if self.verdict_only else self.rationale
    first_frame_only: bool = False

    @field_validator("declarations")
    @classmethod
    def _known_categories(cls, value: dict[str, Declaration]) -> dict[str, Declaration]:
        unknown = sorted(set(value) - set(CATEGORY_BY_CODE))
        if unknown:
            raise ValueError(
                f"unknown policy categories {unknown}; known: {', '.join(CATEGORY_BY_CODE)} (NA cannot be declared)"
            )
        return {k: v for k, v in value.items() if v is not Declaration.DEFAULT}

    @property
    def uses_sensitive(self) -> bool:
        """True when a category is declared sensitive, which the released checkpoints were not trained on."""
        return Declaration.SENSITIVE in self.declarations.values()

    def text(self, model_prompt_version: PromptVersion) -> str:
        """The exact text sent after the image for a model whose prompt version is ``model_prompt_version``."""
        return render_policy_text(self.prompt_version or model_prompt_version, self.declarations)

    def sha256(self, model_prompt_version: PromptVersion) -> str:
        """SHA-256 (hex) of :meth:`text`; identifies what the model actually read."""
        return hashlib.sha256(self.text(model_prompt_version).encode("utf-8")).hexdigest()


class PolicyInfo(BaseModel):
    """The policy facts an event carries."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    sha256: str
    prompt_version: PromptVersion
    declarations: dict[str, Declaration] = Field(default_factory=dict)

    @classmethod
    def of(cls, policy: Policy, model_prompt_version: PromptVersion) -> PolicyInfo:
        return cls(
            name=policy.name,
            version=policy.version,
            sha256=policy.sha256(model_prompt_version),
            prompt_version=policy.prompt_version or model_prompt_version,
            declarations=policy.declarations,
        )


DEFAULT_POLICY = Policy()
