"""The model's verdict and the JSON schema that constrains SGLang's output to it.

LlavaGuard emits ``rating`` first, then ``category``, then ``rationale`` (``json.dumps(indent=4)`` of that order);
the schema keeps that property order. Decisions key on ``rating``: a Safe verdict may carry an O-category.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.taxonomy import CATEGORY_NAMES, RATINGS, Rating, category_code

RATIONALE_MAX_CHARS = 4000  # the most any rationale may hold (the schema's and the event's hard ceiling)

# How ``unsafe_score`` was obtained (the event says it, so consumers know what the number means):
#   logprobs   - the server returned untempered log-probabilities of the rating token (SGLang with
#                SGLANG_RETURN_ORIGINAL_LOGPROB=1, or temperature 0), renormalised over the two ratings;
#   detempered - the server returned log(softmax(logits / T)) (SGLang's default); guardq multiplied them by T
#                before renormalising, which recovers softmax(logits) over the rating candidates exactly;
#   logits     - the local backend read the logits themselves.
ScoreMethod = Literal["logprobs", "detempered", "logits"]

# The longest verdict skeleton the model can emit around the rationale, in the trained indent=4 layout. Every
# character of it is ASCII, and a token carries at least one character, so it costs at most this many tokens.
_LONGEST_SKELETON = json.dumps(
    {"rating": max(RATINGS, key=len), "category": max(CATEGORY_NAMES, key=len), "rationale": ""}, indent=4
)
SKELETON_MAX_TOKENS = len(_LONGEST_SKELETON) + 1  # + the end-of-sequence token


def rationale_budget(max_new_tokens: int, *, tokens_per_char: int = 1) -> int:
    """The rationale's ``maxLength`` that lets the grammar close the object within ``max_new_tokens``.

    With one token per rationale character at worst (plain text: every printable ASCII character is a token of
    its own in LLaVA's, Yi's and Qwen's vocabularies) the skeleton plus ``maxLength`` characters always fit, so
    the object closes before the budget runs out. ``tokens_per_char=4`` covers byte-level tokens of any UTF-8
    text. Escapes and multi-byte characters can still exceed the plain-text bound; such an output ends with
    ``finish_reason: length`` after the rating and category, and is kept with ``rationale_truncated`` (see
    ``worker.inference.output.parse_truncated``) instead of being thrown away.
    """
    room = (max_new_tokens - SKELETON_MAX_TOKENS) // max(1, tokens_per_char)
    return max(0, min(RATIONALE_MAX_CHARS, room))


class Verdict(BaseModel):
    """Rating, policy category, rationale and (when logprobs were requested) P(Unsafe)."""

    model_config = ConfigDict(frozen=True)

    rating: Rating
    category: str
    rationale: str | None = Field(default=None, max_length=RATIONALE_MAX_CHARS)
    unsafe_score: float | None = Field(default=None, ge=0.0, le=1.0)
    score_method: ScoreMethod | None = None
    # True only when the token budget ran out inside the rationale: rating and category are whole, the rationale
    # is the part generated before the cut (absent otherwise).
    rationale_truncated: bool | None = None

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in CATEGORY_NAMES:
            raise ValueError(f"category {value[:60]!r} is not one of the 10 LlavaGuard categories")
        return value

    @property
    def category_code(self) -> str:
        return category_code(self.category)

    @property
    def unsafe(self) -> bool:
        return self.rating == "Unsafe"


def verdict_json_schema(
    *, with_rationale: bool = True, rationale_max_chars: int = RATIONALE_MAX_CHARS
) -> dict[str, Any]:
    """JSON schema for structured output; properties in the trained order rating, category, rationale.

    ``maxLength`` bounds the rationale so a runaway string cannot eat the token budget and end unparsable.
    """
    properties: dict[str, Any] = {
        "rating": {"type": "string", "enum": list(RATINGS)},
        "category": {"type": "string", "enum": list(CATEGORY_NAMES)},
    }
    if with_rationale:
        properties["rationale"] = {"type": "string", "maxLength": rationale_max_chars}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
