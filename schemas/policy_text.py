"""Render the exact policy text LlavaGuard was trained on (pure Python; no pydantic, so GPU scripts can import it).

The start sentence, then per category ``"<name>: \\n"`` plus the chosen text block plus ``"\\n"`` (a blank line
between categories), then the version's response template; as in training (LLaVA's ``preprocess_multimodal``) the
literal ``<image>`` is removed and the text stripped, because the image goes first as its own message part.
"""

from __future__ import annotations

from functools import lru_cache

from schemas.taxonomy import (
    CATEGORIES,
    IMAGE_TOKEN,
    POLICY_START_SENTENCE,
    RESPONSE_TEMPLATES,
    Declaration,
    PromptVersion,
)


def render_policy_text(version: PromptVersion, declarations: dict[str, Declaration] | None = None) -> str:
    """Return the policy text the model was trained on for ``version`` with the given category declarations."""
    return _render(version, tuple(sorted((declarations or {}).items())))


@lru_cache(maxsize=256)
def _render(version: PromptVersion, declaration_items: tuple[tuple[str, Declaration], ...]) -> str:
    declarations = dict(declaration_items)
    parts = [POLICY_START_SENTENCE]
    for category in CATEGORIES:
        block = category.blocks[declarations.get(category.code, Declaration.DEFAULT)]
        parts.append(f"{category.name}: \n{block}\n")
    parts.append(RESPONSE_TEMPLATES[version])
    return "".join(parts).replace(IMAGE_TOKEN, "").strip()
