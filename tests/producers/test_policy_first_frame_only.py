"""A policy can choose first-frame-only moderation of animations and videos; it is part of what a version is."""

from __future__ import annotations

from producers.policy_store import StoredPolicy, build_policy, describe, diff_policies
from schemas.taxonomy import PromptVersion


def test_first_frame_only_is_stored_shown_and_diffed_but_leaves_the_policy_text_alone() -> None:
    every = build_policy("clips")
    first = build_policy("clips", first_frame_only=True, version=2)
    assert (False, True) == (every.first_frame_only, first.first_frame_only)
    assert every.text(PromptVersion.V1_0) == first.text(PromptVersion.V1_0)
    assert describe(StoredPolicy(first, None), PromptVersion.V1_0)["first_frame_only"] is True
    diff = diff_policies(every, first, PromptVersion.V1_0)
    assert [("first_frame_only", False, True)] == diff.options
    assert not diff.identical
