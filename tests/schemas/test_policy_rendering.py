"""Policy text is byte-exact to LlavaGuard's own construction, pinned by texts its functions generated.

``tests/fixtures/policies/manifest.json`` names, for each pinned text, the LlavaGuard function (and seed) that
produced it in a scratch checkout, and the declarations it made; our renderer must reproduce every byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.policy import Policy, parse_policy_ref, render_policy_text
from schemas.taxonomy import Declaration, PromptVersion

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "policies"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "manifest.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_rendered_policy_text_matches_llavaguards_own_output_byte_for_byte(case: dict[str, Any]) -> None:
    expected = (FIXTURES / case["file"]).read_bytes()
    actual = render_policy_text(PromptVersion(case["prompt_version"]), case["declarations"]).encode("utf-8")
    assert expected == actual


def test_the_pins_cover_non_violating_sensitive_and_several_categories_at_once() -> None:
    kinds = {d for c in CASES for d in c["declarations"].values()}
    assert {"non_violating", "sensitive"} <= kinds
    assert max(len(c["declarations"]) for c in CASES) >= 3
    assert {"v1.0", "v1.1", "v1.2"} == {c["prompt_version"] for c in CASES}


def test_a_policy_with_declarations_renders_the_same_text_as_the_renderer() -> None:
    policy = Policy(name="o9-ok", declarations={"O9": Declaration.NON_VIOLATING})
    assert render_policy_text(PromptVersion.V1_2, {"O9": Declaration.NON_VIOLATING}) == policy.text(PromptVersion.V1_2)
    assert policy.sha256(PromptVersion.V1_2) != Policy().sha256(PromptVersion.V1_2)


def test_a_pinned_prompt_version_wins_over_the_models() -> None:
    pinned = Policy(name="p", prompt_version=PromptVersion.V1_1)
    assert render_policy_text(PromptVersion.V1_1) == pinned.text(PromptVersion.V1_0)


def test_declaring_an_unknown_category_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"O10.*known: O1, O2, O3, O4, O5, O6, O7, O8, O9"):
        Policy(name="bad", declarations={"O10": Declaration.NON_VIOLATING})


def test_policy_references_are_a_name_and_an_optional_positive_version() -> None:
    assert ("kids", None) == parse_policy_ref("kids")
    assert ("kids", 3) == parse_policy_ref("kids@3")
    for bad in ("kids@", "kids@0", "kids@v1", "@2"):
        with pytest.raises(ValueError, match="policy reference"):
            parse_policy_ref(bad)
