"""The model's verdict and the JSON schema that constrains SGLang's output to it.

LlavaGuard emits ``rating`` first, then ``category``, then ``rationale`` (``json.dumps(indent=4)`` of that order);
the schema keeps that property order. Decisions key on ``rating``: a Safe verdict may carry an O-category.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.taxonomy import CATEGORY_NAMES, RATINGS, Rating, category_code

RATIONALE_MAX_CHARS = 4000


class Verdict(BaseModel):
    """Rating, policy category, rationale and (when logprobs were requested) P(Unsafe)."""

    model_config = ConfigDict(frozen=True)

    rating: Rating
    category: str
    rationale: str | None = Field(default=None, max_length=RATIONALE_MAX_CHARS)
    unsafe_score: float | None = Field(default=None, ge=0.0, le=1.0)

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
