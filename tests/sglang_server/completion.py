"""The test server's "model": a chat completion for one request, as real SGLang 0.5.17 would shape it.

The verdict itself is scripted (the image's mean colour picks a rule); everything around it follows the real
server: the layout xgrammar produced, the rationale cut at the schema's ``maxLength``, the output cut at
``max_tokens`` with ``finish_reason: "length"``, tempered logprobs with masked candidates, and for a request
without ``response_format`` one free token (the logprob probe guardq sends).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tests.sglang_server import protocol
from tests.sglang_server.protocol import tokens as tokenize

IMAGE_TOKENS = 576  # LLaVA-1.5: (336 / 14)^2 placeholder tokens per image


@dataclass(frozen=True)
class Decision:
    rating: str
    category: str
    rationale: str
    p_unsafe: float


@dataclass(frozen=True)
class Style:
    """How the scripted model writes (Behaviour fields copied under the server's lock)."""

    layout: str
    rationale_chars: int | None
    control_chars: bool
    original_logprob: bool
    seed: int = 0  # per image: the same image gets the same rambling rationale (temperature-0 determinism)
    cached_tokens: int | None = None  # what the radix cache held of this prompt (with --enable-cache-report)


TEMPLATE_TOKENS = 59  # the chat template's system prompt and "USER: ": shared by every request (real: 59 cached)


class RadixStandIn:
    """SGLang's radix cache, as far as the cached-token count goes: the (image, policy) prompts of finished requests,
    least recently used first. A prompt is matched when its request is admitted to a running slot (computed up to
    its policy if an entry is still there, else only the shared template), and becomes an entry when the request
    finishes. Admission evicts the least recently used entries until what stays fits the KV pool beside the running
    requests: on the H200 a continuation queued behind new verdicts found its prefix evicted this way (28 % of its
    prompt cached, against 99 % when admitted first). Caller holds the lock."""

    def __init__(self, size: int = 4096) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()  # key -> tokens held
        self._held = 0  # their sum, kept as they come and go (a sum per eviction stalled P1 at C = 512)
        self._size = size

    @staticmethod
    def shared_tokens(body: dict[str, Any]) -> int:
        parts = body["messages"][0]["content"]
        policy = " ".join(str(p.get("text") or "") for p in parts if p.get("type") == "text")
        return TEMPLATE_TOKENS + IMAGE_TOKENS + len(tokenize(policy))

    def admit(self, key: str, body: dict[str, Any], *, room: int) -> int:
        """Tokens of this prompt found cached at admission; then evict until the entries fit in ``room`` tokens."""
        shared = self.shared_tokens(body)
        held = self._seen.pop(key, None)  # in use now: not evictable while it runs
        self._held -= held or 0
        while self._seen and self._held > max(0, room):
            self._held -= self._seen.popitem(last=False)[1]
        return shared if held is not None else TEMPLATE_TOKENS

    def finish(self, key: str, body: dict[str, Any]) -> None:
        """The request's prompt stays cached (most recently used) once it finished."""
        self._held += self.shared_tokens(body) - self._seen.pop(key, 0)
        self._seen[key] = self.shared_tokens(body)
        while len(self._seen) > self._size:
            self._held -= self._seen.popitem(last=False)[1]


def prompt_tokens(body: dict[str, Any]) -> int:
    """Template + image + policy text, plus an assistant prefix being continued."""
    parts = body["messages"][0]["content"]
    text = " ".join(str(p.get("text") or "") for p in parts if p.get("type") == "text")
    prefix = _assistant_prefix(body) or ""
    return TEMPLATE_TOKENS + IMAGE_TOKENS + len(tokenize(text)) + len(tokenize(prefix))


def _schema(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else None


def build(body: dict[str, Any], decision: Decision, style: Style, fault: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The response payload and the number of generated tokens (for the serving time)."""
    temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
    top_n = int(body.get("top_logprobs") or 0)
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 128)
    schema = _schema(body)
    prefix = _assistant_prefix(body)
    if prefix is not None and schema is not None and schema.get("type") == "string":
        return _continue_rationale(body, decision, style, prefix, schema, max_tokens)
    if schema is None:
        token, lp = protocol.free_logprobs(temperature, style.original_logprob, top_n)
        finish = "length" if max_tokens <= 1 else "stop"
        return _payload(body, token, lp if body.get("logprobs") else None, finish, 1), 1

    rationale: str | None = None
    props = schema.get("properties", {})
    if "rationale" in props:
        limit = int(props["rationale"].get("maxLength") or protocol.RATIONALE_HARD_MAX)
        if style.rationale_chars is not None:
            rationale = protocol.ramble(style.seed, style.rationale_chars, control_chars=style.control_chars)
        else:
            rationale = decision.rationale
        rationale = rationale[:limit]  # the grammar closes the string at maxLength
    content = protocol.verdict_text(decision.rating, decision.category, rationale, layout=style.layout)
    kind = fault.get("kind")
    if kind == "invalid_json":
        content = '{"rating": "Safe", "category": "NA: None applying", "rationale": "cut'
    elif kind == "bad_category":
        content = protocol.verdict_text("Safe", "O42: Made Up", "x")

    rating = protocol.rating_candidates(decision.p_unsafe, temperature, style.original_logprob)
    first_piece = protocol.RATING_PIECES[decision.rating][0][0]
    if kind in {"invalid_json", "bad_category"}:
        token_list = tokenize(content)
        rating_at = None
    else:
        token_list = protocol.verdict_tokens(content, decision.rating, first_piece)
        rating_at = len(tokenize(content[: content.index(decision.rating, content.index('"rating"') + 9)]))
    finish = "stop"
    if kind == "length":  # the budget ran out before the verdict closed (inside the category)
        cut = content.index('"category"') + 16
        token_list = tokenize(content[:cut])
        finish = "length"
    elif len(token_list) + 1 > max_tokens:  # the end token counts too
        token_list = token_list[:max_tokens]
        finish = "length"
    text = "".join(token_list)
    logprobs = None
    if body.get("logprobs"):
        opening = content.find('"rationale"')
        free_from = len(tokenize(content[: content.index('"', opening + 12) + 1])) if opening >= 0 else None
        logprobs = protocol.logprobs_for(
            token_list,
            rating_at=rating_at if rating_at is not None and rating_at < len(token_list) else None,
            rating=rating,
            top_n=top_n,
            free_from=free_from,
        )
    completion = len(token_list) + (0 if finish == "length" else 1)
    return _payload(body, text, logprobs, finish, completion, style.cached_tokens), completion


def _assistant_prefix(body: dict[str, Any]) -> str | None:
    """The assistant message a ``continue_final_message`` request continues from."""
    messages = body.get("messages") or []
    if body.get("continue_final_message") and len(messages) > 1 and messages[-1].get("role") == "assistant":
        return str(messages[-1].get("content") or "")
    return None


def _continue_rationale(
    body: dict[str, Any], decision: Decision, style: Style, prefix: str, schema: dict[str, Any], max_tokens: int
) -> tuple[dict[str, Any], int]:
    """The rationale string after ``..."rationale": `` (what one pass would have written there), as a JSON string."""
    limit = int(schema.get("maxLength") or protocol.RATIONALE_HARD_MAX)
    if style.rationale_chars is not None:
        rationale = protocol.ramble(style.seed, style.rationale_chars, control_chars=style.control_chars)
    else:
        rationale = decision.rationale
    content = protocol.json_string(rationale[:limit])
    token_list = tokenize(content)
    finish = "stop"
    if len(token_list) + 1 > max_tokens:
        token_list, finish = token_list[:max_tokens], "length"
    completion = len(token_list) + (0 if finish == "length" else 1)
    return _payload(body, "".join(token_list), None, finish, completion, style.cached_tokens), completion


def _payload(
    body: dict[str, Any],
    content: str,
    logprobs: dict[str, Any] | None,
    finish: str,
    completion: int,
    cached_tokens: int | None = None,
) -> dict[str, Any]:
    prompt = prompt_tokens(body)
    return {
        "id": str(body.get("rid") or uuid.uuid4().hex),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "default"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "reasoning_content": None, "tool_calls": None},
                "logprobs": logprobs,
                "finish_reason": finish,
                "matched_stop": None if finish == "length" else 2,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": None if cached_tokens is None else {"cached_tokens": min(cached_tokens, prompt)},
            "reasoning_tokens": 0,
        },
        "metadata": {"weight_version": "default"},
    }
