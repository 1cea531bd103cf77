"""The rationale as a continuation of the verdict already generated (policies with ``rationale: flagged``).

LlavaGuard writes ``rating``, then ``category``, then ``rationale``, and its rationales were trained post hoc on a
prefilled verdict, so the decision is made before the rationale begins. Step one is the verdict-only request (the
fixed request shape without the rationale property); for a flagged verdict, step two sends the same conversation
with the verdict text so far as the assistant's message (``continue_final_message``), the one-pass layout restored:
``{"rating": "Unsafe", "category": "O2: ...", "rationale": `` in exactly the whitespace the model used. The
grammar of step two is the rationale's own JSON schema (a string of at most ``maxLength`` characters), so the
structured-output guarantee holds for the continuation, and the rationale is conditioned on the same text as in
one pass. The image comes first and the policy after it, so everything up to the verdict is already in SGLang's
radix cache: step two prefills only the few tokens of the verdict text.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from worker.inference.output import InvalidModelOutput

# SGLang priorities (higher first under --enable-priority-scheduling). Measured on the H200: under saturation a
# continuation queued behind new verdicts found its prefix evicted (54 % of its prompt cached on average); admitted
# first, it arrives while the prefix is still there. The difference stays below SGLang's preemption threshold (10),
# so a continuation never preempts a running request.
VERDICT_PRIORITY = 0
CONTINUATION_PRIORITY = 1

# A verdict-only output up to the end of the category value, with the model's own whitespace captured.
_HEAD = re.compile(
    r'^(?P<head>\s*\{\s*"rating"(?P<key_ws>\s*):(?P<val_ws>\s*)"(?:Safe|Unsafe)"\s*,(?P<item_ws>\s*)'
    r'"category"\s*:\s*"[^"\\]*")(?P<before_close>\s*)\}'
)


def rationale_prefix(verdict_text: str) -> tuple[str, str]:
    """The one-pass text before the rationale's value (``...category": "X", "rationale": `` in the model's layout)
    and the whitespace the model put before the closing brace (the one-pass text ends with it too)."""
    match = _HEAD.match(verdict_text)
    if match is None:
        raise InvalidModelOutput(f"verdict text has no rating and category to continue from: {verdict_text[:120]!r}")
    prefix = f'{match["head"]},{match["item_ws"]}"rationale"{match["key_ws"]}:{match["val_ws"]}'
    return prefix, match["before_close"]


def continuation_body(
    verdict_body: dict[str, Any], prefix: str, *, rationale_chars: int, max_tokens: int, rid: str
) -> dict[str, Any]:
    """The verdict request continued from ``prefix``; its grammar is the rationale string's schema."""
    body = copy.deepcopy(verdict_body)
    body["messages"].append({"role": "assistant", "content": prefix})
    body["continue_final_message"] = True
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {
            "name": "llavaguard_rationale",
            "schema": {"type": "string", "maxLength": rationale_chars},
            "strict": True,
        },
    }
    body["max_tokens"] = max(1, max_tokens)
    body["rid"] = rid
    if "priority" in body:
        body["priority"] = CONTINUATION_PRIORITY
    body.pop("logprobs", None)
    body.pop("top_logprobs", None)
    return body


def parse_rationale(content: str, *, finished: bool) -> tuple[str, bool]:
    """The rationale from step two's output (a JSON string, maybe cut by the token budget); (text, truncated)."""
    text = content.strip()
    if not text.startswith('"'):
        raise InvalidModelOutput(f"rationale continuation is not a JSON string: {content[:120]!r}")
    if finished:
        try:
            value = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            raise InvalidModelOutput(
                f"rationale continuation is not valid JSON ({exc.msg}): {content[:120]!r}"
            ) from None
        if not isinstance(value, str):
            raise InvalidModelOutput("rationale continuation is not a string")
        return value, False
    body = text[1:]
    for cut in range(7):  # the budget may have split an escape sequence
        try:
            return json.loads(f'"{body[: len(body) - cut]}"', strict=False), True
        except json.JSONDecodeError:
            continue
    return body, True
