"""Turn the model's text into a :class:`~schemas.verdict.Verdict`, strictly and with a clear error otherwise."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
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


def _rating_word(token: str) -> str:
    """A candidate token without the JSON quote, whitespace or tokenizer space markers around it."""
    return token.strip().lstrip("\u2581\u0120").strip().strip('"').strip()


def unsafe_probability(top_logprobs: list[dict[str, Any]] | None) -> float | None:
    """P(Unsafe) from the candidates at the rating token: ``[{"token": "Unsafe", "logprob": -0.1}, ...]``.

    Candidates are normalised over the two ratings. A tokenizer may split the word (``"Un"`` + ``"safe"``,
    ``"S"`` + ``"afe"``) or glue a space or the opening quote to it (``" Unsafe"``, ``' "Safe'``): a candidate
    counts for a rating when it is a prefix of that word (or the word itself, possibly with more after it).
    """
    if not top_logprobs:
        return None
    unsafe = safe = 0.0
    for item in top_logprobs:
        token = _rating_word(str(item.get("token") or ""))
        if not token:
            continue
        prob = math.exp(float(item.get("logprob", -math.inf)))
        if "Unsafe".startswith(token) or token.startswith("Unsafe"):
            unsafe += prob
        elif "Safe".startswith(token) or token.startswith("Safe"):
            safe += prob
    total = unsafe + safe
    return None if total == 0 else round(unsafe / total, 6)


_AFTER_RATING_QUOTE = re.compile(r'"rating"\s*:\s*"$')
_AFTER_RATING_COLON = re.compile(r'"rating"\s*:\s*$')
_QUOTE_THEN_WORD = re.compile(r'^\s*"\s*\w')


def locate_rating(tokens: Sequence[str | None]) -> int | None:
    """Index of the generated token that starts the rating value (the token after ``"rating": "``).

    Also finds it when the tokenizer glued the opening quote to the value (``' "Unsafe'`` after ``"rating":``).
    None when it is absent or token texts are unknown.
    """
    text = ""
    for index, token in enumerate(tokens):
        if token is None:
            return None
        if _AFTER_RATING_QUOTE.search(text) or (_AFTER_RATING_COLON.search(text) and _QUOTE_THEN_WORD.match(token)):
            return index
        text += token
    return None


def chat_rating_candidates(content: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Candidates at the rating token in chat ``choices[0].logprobs.content`` (``top_logprobs`` per token)."""
    index = locate_rating([str(item.get("token", "")) for item in content])
    if index is None:
        return None
    item = content[index]
    return list(item.get("top_logprobs") or [item])


def native_rating_candidates(meta_info: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Candidates at the rating token in native ``/generate`` ``meta_info``.

    SGLang returns ``output_token_logprobs`` (the generated token per position) and ``output_top_logprobs``
    (per position a list of candidates), each entry a ``[logprob, token_id, token_text]`` triple; the text is
    there only with ``return_text_in_logprobs``. Without ``output_token_logprobs`` the best candidate stands in.
    """
    top = meta_info.get("output_top_logprobs") or []
    chosen = meta_info.get("output_token_logprobs")
    if chosen:
        texts = [_triple_text(entry) for entry in chosen]
    else:
        texts = [_triple_text(max(pos, key=lambda e: float(e[0]))) if pos else None for pos in top]
    index = locate_rating(texts)
    if index is None or index >= len(top) or not top[index]:
        return None
    return [{"token": _triple_text(entry) or "", "logprob": float(entry[0])} for entry in top[index]]


def _triple_text(entry: Sequence[Any] | None) -> str | None:
    if not entry or len(entry) < 3 or entry[2] is None:
        return None
    return str(entry[2])


def score_from_response(payload: dict[str, Any]) -> float | None:
    """P(Unsafe) from an SGLang response of either shape: chat completions or native ``/generate``."""
    meta = payload.get("meta_info")
    if isinstance(meta, dict):
        return unsafe_probability(native_rating_candidates(meta))
    try:
        content = (payload["choices"][0].get("logprobs") or {}).get("content") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return unsafe_probability(chat_rating_candidates(content))
