"""P(Unsafe) from the candidates an inference server reports at the rating token.

LlavaGuard decides at the first value token (``{"rating": "`` is followed by ``Safe`` or ``Unsafe``), so the
probability mass of the tokens that continue to ``Unsafe`` against those that continue to ``Safe`` is the model's
P(Unsafe). What a real SGLang 0.5.17 server reports there (measured on the H200, ``docs/sglang-real.md``):

- **Tempered values.** SGLang returns ``log(softmax(logits / T))`` unless the server runs with
  ``SGLANG_RETURN_ORIGINAL_LOGPROB=1``: at the seed's T = 0.2 the gap between two candidates is 5 times the
  model's own. Multiplying each returned logprob by T gives ``logits + c`` back (c is the same for every
  candidate), so renormalising ``exp(T * logprob)`` over the rating candidates recovers softmax(logits) over them
  exactly: the "detempered" score. Untempered values (or T = 0, where SGLang samples greedily and reports
  untempered values) are renormalised as they are.
- **Masked candidates.** The grammar masks every token that cannot continue the JSON; SGLang still lists masked
  tokens among ``top_logprobs``, at -3.4e38 (float32's minimum). Candidates come sorted, so one masked candidate
  among those returned proves every allowed one is there: the score is then complete, not a truncated sum.
- **Sub-word pieces.** The rating word arrives in pieces (``S`` + ``afe``, ``Un`` + ``safe``, ``Uns``...): a
  candidate counts for a rating when it is a prefix of that word (or the word with more after it).

Native ``/generate`` payloads (``meta_info.output_top_logprobs`` triples) are read the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MASKED_BELOW = -1e30  # a candidate at or below this logprob was masked by the grammar (SGLang reports -3.4e38)


@dataclass(frozen=True)
class RatingScore:
    """P(Unsafe) over the rating candidates, and whether every candidate the grammar allowed was seen."""

    unsafe: float
    complete: bool


def _rating_word(token: str) -> str:
    """A candidate token without the JSON quote, whitespace or tokenizer space markers around it."""
    return token.strip().lstrip("\u2581\u0120").strip().strip('"').strip()


def _side(token: str) -> str | None:
    word = _rating_word(token)
    if not word:
        return None
    if "Unsafe".startswith(word) or word.startswith("Unsafe"):
        return "Unsafe"
    if "Safe".startswith(word) or word.startswith("Safe"):
        return "Safe"
    return None


def rating_score(candidates: Sequence[dict[str, Any]] | None, *, temperature: float = 1.0) -> RatingScore | None:
    """P(Unsafe) from ``[{"token": "Un", "logprob": -0.3}, ...]`` at the rating token.

    ``temperature`` is the T the server divided the logits by before it reported them (1.0 for untempered values).
    None when no candidate continues to either rating.
    """
    if not candidates:
        return None
    scale = temperature if temperature > 0 else 1.0
    scaled: list[tuple[str, float]] = []
    complete = False
    for item in candidates:
        logprob = float(item.get("logprob", -math.inf))
        if logprob <= MASKED_BELOW or math.isnan(logprob):
            complete = True
            continue
        side = _side(str(item.get("token") or ""))
        if side is not None:
            scaled.append((side, logprob * scale))
    if not scaled:
        return None
    top = max(value for _, value in scaled)
    unsafe = sum(math.exp(v - top) for side, v in scaled if side == "Unsafe")
    total = sum(math.exp(v - top) for _, v in scaled)
    return RatingScore(unsafe=round(unsafe / total, 6), complete=complete)


def unsafe_probability(candidates: Sequence[dict[str, Any]] | None, *, temperature: float = 1.0) -> float | None:
    """:func:`rating_score`'s P(Unsafe) alone."""
    score = rating_score(candidates, temperature=temperature)
    return None if score is None else score.unsafe


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


def response_candidates(payload: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The rating token's candidates from an SGLang response of either shape: chat completions or ``/generate``."""
    meta = payload.get("meta_info")
    if isinstance(meta, dict):
        return native_rating_candidates(meta)
    try:
        content = (payload["choices"][0].get("logprobs") or {}).get("content") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return chat_rating_candidates(content)


def score_from_response(payload: dict[str, Any], *, temperature: float = 1.0) -> float | None:
    """P(Unsafe) from an SGLang response (``temperature``: the T its logprobs are divided by; 1.0 = untempered)."""
    return unsafe_probability(response_candidates(payload), temperature=temperature)
