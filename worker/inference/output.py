"""Turn the model's text into a :class:`~schemas.verdict.Verdict`, strictly and with a clear error otherwise."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.verdict import Verdict


class InvalidModelOutput(PermanentError):
    """Raised when the model's text is not a valid verdict (bad JSON, unknown category, truncated)."""

    code = ErrorCode.INVALID_MODEL_OUTPUT


def parse_verdict(
    text: str, *, with_rationale: bool = True, unsafe_score: float | None = None, strict: bool = True
) -> Verdict:
    """Parse the JSON object the model produced; tolerate text around it, never guess missing fields.

    ``strict=False`` accepts raw control characters inside strings (``json.loads(strict=False)``): grammar-
    constrained decoding may emit them in the rationale, where they are data, not a syntax error.
    """
    candidate = text.strip()
    try:
        payload = json.loads(candidate, strict=strict)
    except json.JSONDecodeError:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            raise InvalidModelOutput(f"model output is not JSON: {candidate[:120]!r}") from None
        try:
            payload = json.loads(candidate[start : end + 1], strict=strict)
        except json.JSONDecodeError as exc:
            raise InvalidModelOutput(f"model output is not valid JSON ({exc.msg}): {candidate[:120]!r}") from None
    if not isinstance(payload, dict):
        raise InvalidModelOutput(f"model output is JSON but not an object: {candidate[:120]!r}")
    if with_rationale and not isinstance(payload.get("rationale"), str):
        raise InvalidModelOutput("model output has no rationale")
    try:
        return Verdict(
            rating=payload.get("rating"),
            category=payload.get("category"),
            rationale=payload.get("rationale"),
            unsafe_score=unsafe_score,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidModelOutput(f"model output field {where!r}: {first['msg']}") from None


def unsafe_probability(top_logprobs: list[dict[str, Any]] | None) -> float | None:
    """P(Unsafe) from the candidates at the rating token: ``[{"token": "Unsafe", "logprob": -0.1}, ...]``.

    Candidates are normalised over the two ratings; tokens are matched by prefix ("Uns" / "Saf" pieces count).
    """
    if not top_logprobs:
        return None
    unsafe = safe = 0.0
    for item in top_logprobs:
        token = str(item.get("token", "")).strip().strip('"')
        if not token:
            continue
        prob = math.exp(float(item.get("logprob", -math.inf)))
        if "Unsafe".startswith(token) or token.startswith("Unsafe"):
            unsafe += prob
        elif "Safe".startswith(token) or token.startswith("Safe"):
            safe += prob
    total = unsafe + safe
    return None if total == 0 else round(unsafe / total, 6)
