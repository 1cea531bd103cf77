"""SGLang 0.5.17's request checks and response pieces for the test server, as the real server showed them.

Every behaviour here was seen on a real SGLang 0.5.17 serving a LLaVA-1.5-shaped checkpoint on an H200
(``tests/fixtures/sglang-0.5.17/``, ``docs/sglang-real.md``):

- the output layout under xgrammar with ``--constrained-json-disable-any-whitespace``: ``{"rating": "Safe",
  "category": "...", "rationale": "..."}`` (a space after ``:`` and ``,``), raw control characters allowed inside
  strings, the rationale cut by the grammar at the schema's ``maxLength``;
- ``finish_reason: "length"`` with an unterminated string when the tokens run out before the object closes;
- logprobs divided by the temperature (``log(softmax(logits / T))``) unless the server runs with
  ``SGLANG_RETURN_ORIGINAL_LOGPROB``, untempered when T = 0;
- every position's ``top_logprobs`` padded with grammar-masked candidates at -3.4e38, a forced token at 0.0;
- the rating word in sub-word pieces (``S`` + ``afe``, ``Un`` + ``safe``) with several allowed first pieces.
"""

from __future__ import annotations

import base64
import io
import math
import random
import re
from typing import Any

from PIL import Image

RATIONALE_HARD_MAX = 4000  # a schema without maxLength: bounded anyway so the test server cannot run away
MASKED = -3.4028234663852886e38  # float32's minimum: what SGLang reports for a grammar-masked candidate
MASKED_FILL = [
    "</s>",
    "<unk>",
    "!",
    "<s>",
    "#",
    "$",
    "%",
    "&",
    "'",
    "(",
    ")",
    "*",
    "+",
    "-",
    ".",
    "/",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    ";",
    "<",
    "=",
    ">",
]  # enough for top_logprobs=20
# First pieces the grammar allows at the rating value and how the model's mass splits over them (the real
# tokenizer offered S, Safe, Un, U, Uns, Unsafe there). More than 5 allowed pieces: top_logprobs=5 truncates.
RATING_PIECES = {
    "Safe": [("S", 0.80), ("Safe", 0.15), ("Sa", 0.05)],
    "Unsafe": [("Un", 0.7), ("U", 0.12), ("Uns", 0.1), ("Unsafe", 0.08)],
}
RATING_TAIL = {
    "Safe": {"S": ["afe"], "Safe": [], "Sa": ["fe"]},
    "Unsafe": {"Un": ["safe"], "U": ["n", "safe"], "Uns": ["afe"], "Unsafe": []},
}
# An unconstrained first token (the tempering probe, or text without a schema): fixed logits.
FREE_LOGITS = [("Safe", 0.0), ("The", -0.7), ("Un", -1.3), ("Yes", -2.1), ("No", -2.6), ("I", -3.2)]


def tokens(text: str) -> list[str]:
    """A crude tokenizer: words, spaces and punctuation pieces, enough for token counts and logprobs."""
    return re.findall(r"\w+|\s+|[^\w\s]", text)


def check_request(body: Any) -> tuple[str | None, Image.Image | None, str | None]:
    """Validate like SGLang's ChatCompletionRequest; return (problem, image, policy text)."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages is required", None, None
    fmt = body.get("response_format")
    if fmt is not None and fmt.get("type") == "json_schema" and not (fmt.get("json_schema") or {}).get("schema"):
        return "schema_ is required for json_schema response format request.", None, None
    for key in ("temperature", "top_p"):
        if key in body and not isinstance(body[key], int | float):
            return f"{key} must be a number", None, None
    content = body["messages"][0].get("content")
    if not isinstance(content, list):
        return "content must be a list of parts for a vision request", None, None
    image = text = None
    for part in content:
        if part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if not url.startswith("data:"):
                return "test server accepts only data: URIs (a worker must never forward user URLs)", None, None
            try:
                image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1], validate=True)))
                image.load()
            except Exception:
                return "Could not decode image", None, None
        elif part.get("type") == "text":
            text = part.get("text")
    if image is None:
        return "no image part", None, text
    return None, image, text


def summary(body: Any) -> dict[str, Any]:
    """The request minus the base64 image (kept small for the log)."""
    if not isinstance(body, dict):
        return {}
    out = {k: v for k, v in body.items() if k != "messages"}
    try:
        parts = body["messages"][0]["content"]
        out["part_types"] = [p.get("type") for p in parts]
        out["image_prefix"] = parts[0].get("image_url", {}).get("url", "")[:30]
        out["image_b64_len"] = len(parts[0].get("image_url", {}).get("url", ""))
        out["roles"] = [m.get("role") for m in body["messages"]]
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return out


def json_string(value: str) -> str:
    """A JSON string as xgrammar lets the model write it: quotes and backslashes escaped, control chars raw."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def verdict_text(rating: str, category: str, rationale: str | None, *, layout: str = "compact") -> str:
    """The verdict object in the real server's layout (``compact``) or the trained one (``indent4``)."""
    fields = [("rating", rating), ("category", category)] + (
        [("rationale", rationale)] if rationale is not None else []
    )
    if layout == "indent4":
        inner = ",\n".join(f"    {json_string(k)}: {json_string(v)}" for k, v in fields)
        return "{\n" + inner + "\n}"
    return "{" + ", ".join(f"{json_string(k)}: {json_string(v)}" for k, v in fields) + "}"


def ramble(seed: int, length: int, *, control_chars: bool = False) -> str:
    """Text like a random-weight model's rationale: word salad up to ``length`` characters."""
    rnd = random.Random(seed)
    words = ["Delegate", "success", "image", "sort", "except", "Source", "frame", "kwonly", "redirect", "ValueError"]
    out: list[str] = []
    size = 0
    while size < length:
        word = rnd.choice(words)
        if control_chars and rnd.random() < 0.05:
            word += rnd.choice(["\u0005", "\u001a", "\u0010"])
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:length]


def temper(logprobs: list[float], temperature: float, original: bool) -> list[float]:
    """What SGLang reports for untempered log-probabilities over the allowed candidates."""
    if original or temperature <= 0:
        return logprobs
    scaled = [lp / temperature for lp in logprobs]
    top = max(scaled)
    norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - norm for v in scaled]


def _padded(candidates: list[tuple[str, float]], n: int) -> list[dict[str, Any]]:
    ranked = sorted(candidates, key=lambda c: -c[1])[:n]
    out = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked]
    for filler in MASKED_FILL[: max(0, n - len(out))]:
        out.append({"token": filler, "logprob": MASKED, "bytes": list(filler.encode())})
    return out


def rating_candidates(p_unsafe: float, temperature: float, original: bool) -> list[tuple[str, float]]:
    """The allowed first pieces of the rating value with the logprobs the server reports for them."""
    pieces = [(t, share * (1 - p_unsafe)) for t, share in RATING_PIECES["Safe"]]
    pieces += [(t, share * p_unsafe) for t, share in RATING_PIECES["Unsafe"]]
    logprobs = [math.log(max(p, 1e-12)) for _, p in pieces]
    return list(zip([t for t, _ in pieces], temper(logprobs, temperature, original), strict=True))


def verdict_tokens(content: str, rating: str, first_piece: str) -> list[str]:
    """Tokens of a verdict text, the rating value split into the pieces that start with ``first_piece``."""
    head = content.index(rating, content.index('"rating"') + 9)
    pieces = [first_piece, *RATING_TAIL[rating][first_piece]]
    return tokens(content[:head]) + pieces + tokens(content[head + len(rating) :])


FREE_WORDS = [
    "image",
    " the",
    "ing",
    " a",
    "Source",
    " sort",
    "ed",
    " of",
    "Delegate",
    " is",
    "er",
    " to",
    "al",
    " success",
    "s",
    " in",
    "ly",
    " and",
    "ValueError",
    " on",
    "frame",
]


def logprobs_for(
    token_list: list[str],
    *,
    rating_at: int | None,
    rating: list[tuple[str, float]],
    top_n: int,
    free_from: int | None = None,
) -> dict[str, Any]:
    """Chat-style ``logprobs.content``: the rating position carries its candidates, the JSON syntax is forced (one
    candidate, the rest masked), and inside the rationale (from ``free_from``) the grammar lets almost anything
    through, so the real server listed ``top_n`` unmasked candidates there."""
    content = []
    for index, token in enumerate(token_list):
        if free_from is not None and index >= free_from:
            others = [(w, -2.0 - 0.25 * i) for i, w in enumerate(w for w in FREE_WORDS if w != token)]
            content.append(
                {
                    "token": token,
                    "logprob": -0.5,
                    "bytes": list(token.encode()),
                    "top_logprobs": _padded([(token, -0.5), *others], top_n),
                }
            )
        elif index == rating_at:
            chosen = next(lp for t, lp in rating if t == token)
            content.append(
                {
                    "token": token,
                    "logprob": chosen,
                    "bytes": list(token.encode()),
                    "top_logprobs": _padded(rating, top_n),
                }
            )
        else:
            content.append(
                {
                    "token": token,
                    "logprob": 0.0,
                    "bytes": list(token.encode()),
                    "top_logprobs": _padded([(token, 0.0)], top_n),
                }
            )
    return {"content": content}


def free_logprobs(temperature: float, original: bool, top_n: int) -> tuple[str, dict[str, Any]]:
    """One unconstrained token (no response_format) with its candidates, tempered like the real sampler."""
    names = [t for t, _ in FREE_LOGITS]
    raw = [z for _, z in FREE_LOGITS]
    top = max(raw)
    norm = top + math.log(sum(math.exp(z - top) for z in raw))
    reported = temper([z - norm for z in raw], temperature, original)
    pairs = list(zip(names, reported, strict=True))
    token = pairs[0][0]
    entry = {
        "token": token,
        "logprob": pairs[0][1],
        "bytes": list(token.encode()),
        "top_logprobs": _padded(pairs, top_n),
    }
    return token, {"content": [entry]}
