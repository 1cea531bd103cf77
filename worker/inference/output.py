"""Turn the model's text into a :class:`~schemas.verdict.Verdict`, strictly and with a clear error otherwise.

Two facts from a real SGLang 0.5.17 server shape this (``docs/sglang-real.md``):

- Grammar-constrained decoding (xgrammar) lets raw control characters (``\\u0005``, ``\\u001a`` ...) into JSON
  strings. They are data in the rationale, not a syntax error: the text is read with ``json.loads(strict=False)``.
- When the token budget runs out inside the rationale the server answers ``finish_reason: "length"`` with an
  unterminated string. Rating and category come first and are complete by then, so :func:`parse_truncated` keeps
  the verdict with the rationale generated so far (``rationale_truncated``) instead of paying for another
  inference that would end the same way.
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.verdict import ScoreMethod, Verdict

# re-exported for callers that located candidates through this module before scores.py existed
from worker.inference.scores import (  # noqa: F401
    chat_rating_candidates,
    locate_rating,
    native_rating_candidates,
    score_from_response,
    unsafe_probability,
)


class InvalidModelOutput(PermanentError):
    """Raised when the model's text is not a valid verdict (bad JSON, unknown category, truncated)."""

    code = ErrorCode.INVALID_MODEL_OUTPUT


def parse_verdict(
    text: str,
    *,
    with_rationale: bool = True,
    unsafe_score: float | None = None,
    score_method: ScoreMethod | None = None,
) -> Verdict:
    """Parse the JSON object the model produced; tolerate text around it, never guess missing fields."""
    candidate = text.strip()
    try:
        payload = json.loads(candidate, strict=False)
    except json.JSONDecodeError:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            raise InvalidModelOutput(f"model output is not JSON: {candidate[:120]!r}") from None
        try:
            payload = json.loads(candidate[start : end + 1], strict=False)
        except json.JSONDecodeError as exc:
            raise InvalidModelOutput(f"model output is not valid JSON ({exc.msg}): {candidate[:120]!r}") from None
    if not isinstance(payload, dict):
        raise InvalidModelOutput(f"model output is JSON but not an object: {candidate[:120]!r}")
    if with_rationale and not isinstance(payload.get("rationale"), str):
        raise InvalidModelOutput("model output has no rationale")
    return _verdict(payload, unsafe_score, score_method)


# The head of a verdict whose rationale string was cut by the token budget: rating and category complete.
_TRUNCATED = re.compile(
    r'^\s*\{\s*"rating"\s*:\s*"(?P<rating>[^"\\]*)"\s*,\s*"category"\s*:\s*"(?P<category>[^"\\]*)"\s*,'
    r'\s*"rationale"\s*:\s*"(?P<rationale>.*)$',
    re.DOTALL,
)


def parse_truncated(
    text: str, *, unsafe_score: float | None = None, score_method: ScoreMethod | None = None
) -> Verdict:
    """The verdict of an output the token budget cut inside the rationale (``finish_reason: length``).

    Raises :class:`InvalidModelOutput` when the cut came before the rationale began (rating or category unfinished).
    """
    match = _TRUNCATED.match(text)
    if match is None:
        raise InvalidModelOutput(f"model output ended (token budget) before the verdict was complete: {text[:120]!r}")
    body = match["rationale"]
    rationale = body  # undecodable even after trimming: keep the raw text rather than lose the verdict
    for cut in range(7):  # the cut may have split an escape (``\\``, ``\\u00e``) or left the closing quote
        try:
            rationale = json.loads(f'"{body[: len(body) - cut]}"', strict=False)
            break
        except json.JSONDecodeError:
            continue
    payload = {"rating": match["rating"], "category": match["category"], "rationale": rationale}
    return _verdict(payload, unsafe_score, score_method, truncated=True)


def _verdict(
    payload: dict[str, object], unsafe_score: float | None, score_method: ScoreMethod | None, *, truncated: bool = False
) -> Verdict:
    try:
        return Verdict(
            rating=payload.get("rating"),
            category=payload.get("category"),
            rationale=payload.get("rationale"),
            unsafe_score=unsafe_score,
            score_method=score_method if unsafe_score is not None else None,
            rationale_truncated=True if truncated else None,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidModelOutput(f"model output field {where!r}: {first['msg']}") from None
