"""P(Unsafe) from SGLang's logprob payloads: chat ``logprobs.content`` and native ``meta_info`` shapes."""

from __future__ import annotations

import math
from typing import Any

import pytest

from worker.inference.output import (
    chat_rating_candidates,
    locate_rating,
    native_rating_candidates,
    score_from_response,
    unsafe_probability,
)


def lp(p: float) -> float:
    return math.log(p)


def native_payload(pieces: list[str], rating_index: int, candidates: list[tuple[str, float]]) -> dict[str, Any]:
    """A /generate response as SGLang returns it with return_logprob, top_logprobs_num, return_text_in_logprobs."""
    chosen = [[-0.01, 1000 + i, piece] for i, piece in enumerate(pieces)]
    top: list[Any] = [[[-0.01, 1000 + i, piece], [-6.5, 7, " "]] for i, piece in enumerate(pieces)]
    top[rating_index] = [[lp(p), 2000 + j, text] for j, (text, p) in enumerate(candidates)]
    chosen[rating_index] = [lp(candidates[0][1]), 2000, candidates[0][0]]
    return {
        "text": "".join(pieces),
        "meta_info": {
            "id": "4f1c2a",
            "finish_reason": {"type": "stop", "matched": 2},
            "prompt_tokens": 1791,
            "completion_tokens": len(pieces),
            "cached_tokens": 0,
            "e2e_latency": 0.41,
            "input_token_logprobs": None,
            "output_token_logprobs": chosen,
            "output_top_logprobs": top,
        },
    }


# Llama (LlavaGuard v1.0, vicuna template) decodes "Unsafe" as two pieces.
LLAMA_PIECES = ["{", "\n", "   ", ' "', "rating", '":', ' "', "Un", "safe", '",', "\n", "   ", ' "', "category"]
# Qwen (v1.2 OV) glues the space and quote differently and splits after "Uns".
QWEN_PIECES = ["{\n", "   ", ' "', "rating", '":', ' "', "Uns", "afe", '",\n', "   ", ' "', "category"]


def test_the_rating_token_is_the_one_after_the_rating_key_and_opening_quote() -> None:
    assert 7 == locate_rating(LLAMA_PIECES)
    assert 6 == locate_rating(QWEN_PIECES)


def test_the_rating_token_is_found_when_the_opening_quote_is_glued_to_the_value() -> None:
    assert 3 == locate_rating(["{", '"rating"', ":", ' "Unsafe', '",'])


def test_no_rating_token_without_token_texts_or_without_a_rating_key() -> None:
    assert locate_rating(["{", None, '"rating": "', "Safe"]) is None
    assert locate_rating(['{"category": "', "NA"]) is None


def test_native_payload_with_a_split_unsafe_token_gives_p_unsafe() -> None:
    payload = native_payload(LLAMA_PIECES, 7, [("Un", 0.8), ("Saf", 0.15), ("S", 0.05)])
    assert 0.8 == score_from_response(payload)


def test_native_payload_from_a_qwen_tokenizer_with_leading_space_candidates() -> None:
    payload = native_payload(QWEN_PIECES, 6, [("Uns", 0.3), (" Safe", 0.6), ("Safe", 0.1)])
    assert 0.3 == score_from_response(payload)


def test_native_candidates_come_back_as_token_and_logprob_pairs() -> None:
    payload = native_payload(LLAMA_PIECES, 7, [("Un", 0.5), ("Safe", 0.5)])
    candidates = native_rating_candidates(payload["meta_info"])
    assert candidates is not None
    assert ["Un", "Safe"] == [c["token"] for c in candidates]
    assert pytest.approx(math.log(0.5)) == candidates[1]["logprob"]


def test_native_payload_without_token_texts_has_no_score() -> None:
    """Without return_text_in_logprobs SGLang sends [logprob, id, None]: the position cannot be located."""
    payload = native_payload(LLAMA_PIECES, 7, [("Un", 0.8), ("Safe", 0.2)])
    for entry in payload["meta_info"]["output_token_logprobs"]:
        entry[2] = None
    assert score_from_response(payload) is None


def test_native_payload_without_chosen_tokens_uses_the_best_candidate_per_position() -> None:
    payload = native_payload(LLAMA_PIECES, 7, [("Safe", 0.9), ("Un", 0.1)])
    del payload["meta_info"]["output_token_logprobs"]
    assert 0.1 == score_from_response(payload)


def chat_payload(tokens: list[str], rating_index: int, candidates: list[tuple[str, float]]) -> dict[str, Any]:
    content = [
        {"token": t, "logprob": -0.01, "bytes": list(t.encode()), "top_logprobs": [{"token": t, "logprob": -0.01}]}
        for t in tokens
    ]
    content[rating_index]["top_logprobs"] = [
        {"token": t, "logprob": lp(p), "bytes": list(t.encode())} for t, p in candidates
    ]
    return {
        "id": "c1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "logprobs": {"content": content},
                "finish_reason": "stop",
            }
        ],
    }


def test_chat_payload_with_split_tokens_gives_p_unsafe() -> None:
    payload = chat_payload(LLAMA_PIECES, 7, [("Saf", 0.75), ("Un", 0.25)])
    assert 0.25 == score_from_response(payload)


def test_chat_payload_with_a_glued_quote_and_space_gives_p_unsafe() -> None:
    tokens = ["{\n", '    "rating":', ' "Unsafe', '",\n']
    payload = chat_payload(tokens, 2, [(' "Unsafe', 0.9), (' "Safe', 0.1)])
    assert 0.9 == score_from_response(payload)


def test_chat_candidates_are_the_rating_tokens_top_logprobs() -> None:
    payload = chat_payload(LLAMA_PIECES, 7, [("Un", 0.6), ("Safe", 0.4)])
    candidates = chat_rating_candidates(payload["choices"][0]["logprobs"]["content"])
    assert candidates is not None and ["Un", "Safe"] == [c["token"] for c in candidates]


def test_a_chat_response_without_logprobs_has_no_score() -> None:
    assert score_from_response({"choices": [{"message": {"content": "{}"}, "logprobs": None}]}) is None


def test_candidates_are_normalised_over_the_two_ratings_and_others_ignored() -> None:
    candidates = [
        {"token": "\u2581Un", "logprob": lp(0.2)},  # sentencepiece space marker
        {"token": "Safe", "logprob": lp(0.6)},
        {"token": "N", "logprob": lp(0.2)},  # neither rating
    ]
    assert 0.25 == unsafe_probability(candidates)


def test_no_rating_candidates_means_no_score() -> None:
    assert unsafe_probability([{"token": '"', "logprob": -0.1}]) is None
    assert unsafe_probability(None) is None
