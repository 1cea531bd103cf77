"""SGLang's request checks and response pieces for the test server: what a real 0.5 server would refuse, the
request summary kept in the log, chat-style logprobs and a crude tokenizer for token counts."""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any

from PIL import Image


def tokens(text: str) -> list[str]:
    """A crude tokenizer: words, spaces and punctuation pieces, enough for token counts and logprobs."""
    return re.findall(r"\w+|\s+|[^\w\s]", text)


def check_request(body: Any) -> tuple[str | None, Image.Image | None, str | None]:
    """Validate like SGLang's ChatCompletionRequest; return (problem, image, policy text)."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages is required", None, None
    fmt = body.get("response_format")
    if fmt is not None:
        if fmt.get("type") == "json_schema" and not (fmt.get("json_schema") or {}).get("schema"):
            return "schema_ is required for json_schema response format request.", None, None
    else:
        return "this test server expects response_format json_schema (guardq always sends it)", None, None
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


def logprobs(tokens: list[str], p_unsafe: float) -> dict[str, Any]:
    """Chat-style logprobs; the token after ``"rating": "`` carries Unsafe/Safe candidates."""
    content = []
    text = ""
    for token in tokens:
        entry: dict[str, Any] = {"token": token, "logprob": -0.01, "bytes": list(token.encode())}
        if re.search(r'"rating"\s*:\s*"$', text):
            candidates = [
                {"token": "Unsafe", "logprob": math.log(max(p_unsafe, 1e-9))},
                {"token": "Safe", "logprob": math.log(max(1 - p_unsafe, 1e-9))},
            ]
            entry["logprob"] = next(c["logprob"] for c in candidates if c["token"] == token)
            entry["top_logprobs"] = candidates
        else:
            entry["top_logprobs"] = [{"token": token, "logprob": -0.01}]
        content.append(entry)
        text += token
    return {"content": content}
