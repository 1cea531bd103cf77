"""The LlavaGuard safety taxonomy, loaded once from the training strings in ``data/llavaguard_taxonomy.json``.

Nothing here retypes policy text: category names, the three text variants per category and the per-version
response templates all come from the data file, which holds the strings the released checkpoints were trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Literal

Rating = Literal["Safe", "Unsafe"]
RATINGS: tuple[Rating, ...] = ("Unsafe", "Safe")


class PromptVersion(StrEnum):
    """Prompt (training template) generations of the released checkpoints."""

    V1_0 = "v1.0"  # json-v16: LlavaGuard 7B / 13B / 34B
    V1_1 = "v1.1"  # json-v22: LlavaGuard-v1.1-7B/13B-hf
    V1_2 = "v1.2"  # json-v24: LlavaGuard-v1.2-0.5B-OV / 7B-OV


class Declaration(StrEnum):
    """How a custom policy declares one category."""

    DEFAULT = "default"  # the trained "Should not / Can" block
    NON_VIOLATING = "non_violating"  # the trained customisation: anything of this category is allowed
    SENSITIVE = "sensitive"  # nothing of this category is allowed; not in the released models' training data


@dataclass(frozen=True)
class Category:
    """One policy category: ``code`` (O1..O9), full ``name`` and its text block per declaration."""

    code: str
    name: str
    blocks: dict[Declaration, str]


def _load() -> tuple[str, tuple[Category, ...], str, dict[PromptVersion, str]]:
    raw = json.loads(resources.files("schemas").joinpath("data/llavaguard_taxonomy.json").read_text("utf-8"))
    categories = tuple(
        Category(
            code=c["code"],
            name=c["name"],
            blocks={
                Declaration.DEFAULT: c["default"],
                Declaration.NON_VIOLATING: c["non_violating"],
                Declaration.SENSITIVE: c["sensitive"],
            },
        )
        for c in raw["categories"]
    )
    templates = {PromptVersion(k): v for k, v in raw["response_templates"].items()}
    return raw["policy_start_sentence"], categories, raw["none_applying"], templates


POLICY_START_SENTENCE, CATEGORIES, NONE_APPLYING, RESPONSE_TEMPLATES = _load()
CATEGORY_CODES: tuple[str, ...] = tuple(c.code for c in CATEGORIES)
CATEGORY_NAMES: tuple[str, ...] = (*(c.name for c in CATEGORIES), NONE_APPLYING)
CATEGORY_BY_CODE: dict[str, Category] = {c.code: c for c in CATEGORIES}
IMAGE_TOKEN = "<image>"  # noqa: S105 - the LLaVA image placeholder, not a secret


def category_code(name: str) -> str:
    """Return the short code (``O1``..``O9`` or ``NA``) of a full category name."""
    return name.split(":", 1)[0]
