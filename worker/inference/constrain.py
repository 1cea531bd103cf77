"""Constrained decoding for the local backend: the verdict grammar (xgrammar) and P(Unsafe) at the rating token.

The grammar is compiled once per process from :func:`schemas.verdict.verdict_json_schema` (rating, category,
rationale in the trained order) with fixed whitespace: ``indent=4`` reproduces ``json.dumps(indent=4)``, the exact
layout LlavaGuard's training targets had, so the model is held to the format it learned. xgrammar's string rule
admits control characters other than CR/LF inside the rationale; the parser reads the output with
``strict=False`` so such a character is data, not a syntax error.

The score observer is not a constraint: it only reads the logits at the step right after ``"rating": "`` and
sums the probability of the tokens that continue to ``Unsafe`` against those that continue to ``Safe``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr
from transformers import LogitsProcessor
from xgrammar.contrib.hf import LogitsProcessor as GrammarLogitsProcessor

from schemas.verdict import verdict_json_schema

TRAINED_INDENT = 4
RATING_PREFIX = b'{\n    "rating": "'
_CONTINUATIONS = {"Unsafe": b'Unsafe",\n    "category": "', "Safe": b'Safe",\n    "category": "'}


class VerdictGrammar:
    """The compiled verdict grammars (with and without rationale) for one tokenizer, plus rating token sets."""

    def __init__(
        self, tokenizer: Any, *, vocab_size: int, stop_token_ids: Sequence[int], rationale_max_chars: int
    ) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        compiler = xgr.GrammarCompiler(self.info)
        self._compiled: dict[bool | str, Any] = {
            with_rationale: compiler.compile_json_schema(
                json.dumps(verdict_json_schema(with_rationale=with_rationale, rationale_max_chars=rationale_max_chars)),
                any_whitespace=False,
                indent=TRAINED_INDENT,
            )
            for with_rationale in (True, False)
        }
        # the rationale alone, continued after a verdict (policies with rationale: flagged)
        self._compiled["rationale"] = compiler.compile_json_schema(
            json.dumps({"type": "string", "maxLength": rationale_max_chars}), any_whitespace=False
        )
        vocab: list[bytes] = self.info.decoded_vocab
        self.token_bytes = vocab
        self.rating_ids = {
            rating: torch.tensor([i for i, piece in enumerate(vocab) if piece and cont.startswith(piece)])
            for rating, cont in _CONTINUATIONS.items()
        }

    def processor(self, with_rationale: Sequence[bool | str]) -> GrammarLogitsProcessor:
        """A fresh xgrammar logits processor for one ``generate`` call, one grammar per batch row (True: verdict
        with rationale, False: verdict only, "rationale": the rationale string continued after a verdict)."""
        return GrammarLogitsProcessor([self._compiled[flag] for flag in with_rationale])


class RatingScoreObserver(LogitsProcessor):
    """Records P(Unsafe) per row at the step after ``{"rating": "`` (rows where a token straddles it get None).

    Runs before the grammar processor and returns the scores unchanged.
    """

    def __init__(self, grammar: VerdictGrammar, prompt_length: int, wanted: Sequence[bool]) -> None:
        self._grammar = grammar
        self._prompt_length = prompt_length
        self._text = [b"" for _ in wanted]
        self._open = list(wanted)
        self.scores: list[float | None] = [None for _ in wanted]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not any(self._open):
            return scores
        generated = input_ids.shape[1] - self._prompt_length
        for row, still_open in enumerate(self._open):
            if not still_open:
                continue
            if generated > 0:
                self._text[row] += self._grammar.token_bytes[int(input_ids[row, -1])]
            text = self._text[row]
            if text == RATING_PREFIX:
                self.scores[row] = self._unsafe_probability(scores[row])
                self._open[row] = False
            elif not RATING_PREFIX.startswith(text):
                self._open[row] = False
        return scores

    def _unsafe_probability(self, logits: torch.Tensor) -> float | None:
        row = logits.float()
        unsafe_ids = self._grammar.rating_ids["Unsafe"].to(row.device)
        safe_ids = self._grammar.rating_ids["Safe"].to(row.device)
        if unsafe_ids.numel() == 0 or safe_ids.numel() == 0:
            return None
        unsafe = torch.logsumexp(row[unsafe_ids], dim=0)
        safe = torch.logsumexp(row[safe_ids], dim=0)
        value = float(torch.sigmoid(unsafe - safe))
        return None if math.isnan(value) else round(value, 6)
