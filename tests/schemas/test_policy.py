"""Policy text is byte-exact to what LlavaGuard was trained on; custom policies swap blocks, never drop categories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.policy import Policy, PolicyInfo, render_policy_text
from schemas.taxonomy import CATEGORY_NAMES, IMAGE_TOKEN, Declaration, PromptVersion

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "policies"
CASES = json.loads((FIXTURES / "manifest.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_rendered_text_matches_llavaguards_own_output_byte_for_byte(case: dict[str, object]) -> None:
    """Fixtures were produced by LlavaGuard's get_default_policy/augmentation functions + LLaVA preprocessing."""
    expected = (FIXTURES / str(case["file"])).read_bytes()
    declarations = {k: Declaration(v) for k, v in dict(case["declarations"]).items()}  # type: ignore[call-overload]
    assert expected == render_policy_text(PromptVersion(str(case["prompt_version"])), declarations).encode()


def test_default_text_has_trained_quirks_and_no_image_token() -> None:
    text = Policy().text(PromptVersion.V1_0)
    assert IMAGE_TOKEN not in text
    assert text.startswith("Provide a safety assessment for the content provided by the user.")
    assert "O1: Hate, Humiliation, Harassment: \nShould not:" in text  # space before the newline
    assert "Contain content of  people planning" not in text  # the double space lives only in O2's non-violating block
    assert "\n\nO2: Violence, Harm, or Cruelty: \n" in text  # blank line between categories
    assert text.endswith('"rationale": str,\n}')


def test_versions_differ_only_in_step_three() -> None:
    v10, v12 = Policy().text(PromptVersion.V1_0), Policy().text(PromptVersion.V1_2)
    assert "Explain the reason why the content is considered safe or unsafe" in v10
    assert "Describe the user content and justify why it is considered safe or unsafe" in v12
    assert Policy().text(PromptVersion.V1_1) == v12


def test_a_custom_policy_keeps_every_category_in_the_json_template() -> None:
    text = Policy(declarations={"O1": "non_violating", "O3": "non_violating", "O9": "sensitive"}).text(
        PromptVersion.V1_2
    )
    template = text[text.index('"category": str<') :]
    for name in CATEGORY_NAMES:
        assert f'"{name}"' in template
        assert text.count(f"{name}: \n") == (0 if name.startswith("NA") else 1)
    assert "Category O1 is declared as non-violating." in text
    assert "Category O9 is declared as sensitive." in text


def test_unknown_categories_are_refused_with_the_valid_ones_named() -> None:
    with pytest.raises(ValidationError, match=r"unknown policy categories \['O12'\]; known: O1, O2"):
        Policy(declarations={"O12": "non_violating"})


def test_default_declarations_are_dropped_so_equal_policies_hash_equal() -> None:
    explicit = Policy(declarations={"O4": "default"})
    assert {} == explicit.declarations
    assert Policy().sha256(PromptVersion.V1_0) == explicit.sha256(PromptVersion.V1_0)


def test_sensitive_use_is_flagged_and_policy_info_names_version_and_hash() -> None:
    policy = Policy(name="strict", version=3, declarations={"O6": "sensitive"})
    assert policy.uses_sensitive
    info = PolicyInfo.of(policy, PromptVersion.V1_2)
    assert ("strict", 3, PromptVersion.V1_2) == (info.name, info.version, info.prompt_version)
    assert policy.sha256(PromptVersion.V1_2) == info.sha256
    assert Policy().sha256(PromptVersion.V1_2) != info.sha256


def test_a_policy_pinned_to_a_prompt_version_ignores_the_models_version() -> None:
    pinned = Policy(prompt_version=PromptVersion.V1_2)
    assert Policy().text(PromptVersion.V1_2) == pinned.text(PromptVersion.V1_0)
