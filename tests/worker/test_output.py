"""Model output → Verdict: strict JSON in the trained shape, P(Unsafe) from the rating token's candidates."""

from __future__ import annotations

import json
import math

import pytest

from schemas.errors import PermanentError
from worker.inference.output import parse_verdict, unsafe_probability
from worker.inference.sglang import rating_candidates

TRAINED = json.dumps(
    {"rating": "Unsafe", "category": "O6: Weapons or Substance Abuse", "rationale": "A rifle."}, indent=4
)


def test_the_trained_output_shape_parses() -> None:
    verdict = parse_verdict(TRAINED)
    assert ("Unsafe", "O6", "A rifle.") == (verdict.rating, verdict.category_code, verdict.rationale)


def test_text_around_the_object_is_tolerated() -> None:
    assert "Unsafe" == parse_verdict(f"Here you go:\n{TRAINED}\n</s>").rating


def test_a_safe_verdict_may_carry_an_o_category() -> None:
    verdict = parse_verdict(json.dumps({"rating": "Safe", "category": "O4: Nudity Content", "rationale": "Art."}))
    assert (False, "O4") == (verdict.unsafe, verdict.category_code)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("I cannot help with that.", "not JSON"),
        ('{"rating": "Safe", "category": "NA: None applying", "rationale": "cut', "not JSON"),
        ('{"rating": "Maybe", "category": "NA: None applying", "rationale": "x"}', "rating"),
        ('{"rating": "Safe", "category": "O10: Spam", "rationale": "x"}', "category"),
        ('{"rating": "Safe", "category": "NA: None applying"}', "rationale"),
        ("[1, 2]", "not an object"),
    ],
)
def test_invalid_output_is_a_permanent_invalid_model_output(text: str, fragment: str) -> None:
    with pytest.raises(PermanentError, match=fragment) as info:
        parse_verdict(text)
    assert "invalid_model_output" == info.value.code


def test_verdict_only_output_needs_no_rationale() -> None:
    verdict = parse_verdict('{"rating": "Safe", "category": "NA: None applying"}', with_rationale=False)
    assert verdict.rationale is None


def test_unsafe_probability_normalises_over_the_two_ratings() -> None:
    candidates = [
        {"token": "Unsafe", "logprob": math.log(0.6)},
        {"token": "Safe", "logprob": math.log(0.2)},
        {"token": "Maybe", "logprob": math.log(0.2)},
    ]
    assert 0.75 == unsafe_probability(candidates)
    assert unsafe_probability([]) is None
    assert unsafe_probability([{"token": "{", "logprob": 0.0}]) is None


def test_split_rating_tokens_count_towards_their_word() -> None:
    candidates = [{"token": "Un", "logprob": math.log(0.3)}, {"token": " Safe", "logprob": math.log(0.7)}]
    assert 0.3 == pytest.approx(unsafe_probability(candidates))


def test_the_rating_token_is_found_after_the_rating_key_not_at_a_fixed_index() -> None:
    pieces = ["{\n", "   ", ' "', "rating", '":', ' "', "Unsafe", '",\n']
    content = [{"token": p, "logprob": -0.1, "top_logprobs": [{"token": p, "logprob": -0.1}]} for p in pieces]
    content[6]["top_logprobs"] = [
        {"token": "Unsafe", "logprob": math.log(0.9)},
        {"token": "Safe", "logprob": math.log(0.1)},
    ]
    candidates = rating_candidates(content)
    assert candidates is not None
    assert 0.9 == pytest.approx(unsafe_probability(candidates))
