from __future__ import annotations

import dataclasses
import math

import pytest

from shared.errors import RoutingError
from shared.routing import confidence

PROMPT = "How does a hash map handle collisions?"
FLUENT = (
    "A hash map handles collisions either by chaining, where each bucket holds a small list of entries, "
    "or by open addressing, where a colliding key probes for the next free slot in the table."
)


def assess(answer=FLUENT, *, prompt=PROMPT, finish_reason="stop", logprobs=None, min_answer_chars=20):
    return confidence.assess_answer(
        prompt=prompt,
        answer=answer,
        finish_reason=finish_reason,
        logprobs=logprobs,
        min_answer_chars=min_answer_chars,
    )


def test_default_threshold_is_half():
    assert confidence.DEFAULT_THRESHOLD == 0.5


def test_fluent_complete_answer_is_confident():
    assert assess().score >= 0.7


def test_fluent_complete_answer_has_no_reasons():
    assert assess().reasons == ()


def test_fluent_complete_answer_is_not_unsure():
    assert not confidence.is_unsure(assess())


def test_hedged_short_answer_is_unsure():
    assert confidence.is_unsure(assess("I'm not sure, maybe 42."))


def test_strong_hedge_alone_is_unsure():
    result = assess(FLUENT + " But honestly, I don't know if that applies here.")
    assert result.is_unsure()
    assert "hedging" in result.reasons


def test_refusal_is_unsure():
    assert assess("As an AI language model, I cannot help with that request.").is_unsure()


def test_curly_apostrophe_hedge_is_detected():
    assert assess(FLUENT + " I\u2019m not sure though.").is_unsure()


def test_hedge_match_is_case_insensitive():
    assert assess(FLUENT + " I DO NOT KNOW.").is_unsure()


def test_hedge_must_be_whole_phrase():
    # "impossibly" contains "possibly" but is not a hedge.
    assert assess(FLUENT + " Chains can grow impossibly long.").reasons == ()


def test_one_weak_hedge_lowers_but_keeps_confident():
    result = assess(FLUENT + " This is probably the most common approach.")
    assert result.score < assess().score
    assert not result.is_unsure()


def test_two_weak_hedges_are_unsure():
    assert assess(FLUENT + " I think it might be slower, possibly.").is_unsure()


@pytest.mark.parametrize("logprobs", [None, [-0.01] * 20])
def test_truncated_answer_is_unsure(logprobs):
    result = assess(finish_reason="length", logprobs=logprobs)
    assert result.is_unsure()
    assert "truncated" in result.reasons


def test_content_filter_is_unsure():
    assert assess(finish_reason="content_filter").is_unsure()


@pytest.mark.parametrize("answer", ["", "   \n"])
def test_empty_answer_is_unsure(answer):
    result = assess(answer)
    assert result.score == 0.0
    assert result.is_unsure()


def test_answer_shorter_than_minimum_is_unsure():
    result = assess("Chaining.")
    assert result.is_unsure()
    assert "too_short" in result.reasons


def test_short_answer_passes_when_minimum_is_zero():
    assert not assess("Chaining.", min_answer_chars=0).is_unsure()


def test_answer_tiny_relative_to_long_prompt_is_unsure():
    long_prompt = "Explain every step of the following system in detail. " * 40
    result = assess("It works by chaining the buckets.", prompt=long_prompt)
    assert "too_short" in result.reasons


def test_high_logprobs_raise_score():
    assert assess(logprobs=[-0.01] * 30).score > assess().score


def test_low_logprobs_lower_score():
    assert assess(logprobs=[-2.5] * 30).score < assess().score


def test_low_logprobs_make_answer_unsure():
    result = assess(logprobs=[-3.0] * 30)
    assert result.is_unsure()
    assert "low_logprob" in result.reasons


def test_one_very_unlikely_token_lowers_score():
    assert assess(logprobs=[-0.01] * 29 + [-12.0]).score < assess(logprobs=[-0.01] * 30).score


def test_logprob_formula():
    logprobs = [-0.2, -0.4, -1.2]
    lp_score = 0.75 * math.exp(-0.6) + 0.25 * math.exp(-1.2 / 4)
    assert math.isclose(assess(logprobs=logprobs).score, 0.4 * 0.85 + 0.6 * lp_score)


def test_high_logprobs_cannot_lift_hedged_answer():
    assert assess("I'm not sure, maybe 42.", logprobs=[-0.001] * 10).is_unsure()


def test_non_finite_logprobs_are_ignored():
    assert assess(logprobs=[math.nan, -math.inf]).score == assess().score


def test_empty_logprobs_count_as_none():
    assert assess(logprobs=[]).score == assess().score


def test_score_stays_in_unit_interval():
    result = assess("maybe perhaps probably possibly I think I guess", logprobs=[-50.0])
    assert 0.0 <= result.score <= 1.0


def test_assessment_is_deterministic():
    assert assess(logprobs=[-0.3, -0.7]) == assess(logprobs=[-0.3, -0.7])


def test_confidence_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        assess().score = 0.0  # type: ignore[misc]


def test_threshold_changes_verdict():
    result = confidence.AnswerConfidence(score=0.6, reasons=())
    assert not result.is_unsure(0.5)
    assert result.is_unsure(0.7)


def test_threshold_outside_unit_interval_raises():
    with pytest.raises(RoutingError):
        confidence.is_unsure(assess(), threshold=1.5)


def test_negative_min_answer_chars_raises():
    with pytest.raises(RoutingError):
        assess(min_answer_chars=-1)


def test_high_logprobs_cannot_lift_two_weak_hedges():
    assert assess(FLUENT + " I think it might be slower, possibly.", logprobs=[-0.001] * 30).is_unsure()


# Characters a case-insensitive match takes for ASCII letters: long s, Kelvin sign, dotless i.
_LOOKALIKES = str.maketrans({"s": "\u017f", "k": "\u212a", "i": "\u0131"})
_PHRASES = confidence.WEAK_HEDGES + confidence.STRONG_HEDGES


def _renderings(phrase: str) -> list[str]:
    """The phrase as answers write it: any case, any whitespace, odd but equivalent letters, in a sentence."""
    words = phrase.split()
    return [
        f"Well, {phrase} it is Paris.",
        phrase.upper(),
        phrase.title(),
        "\n".join(words) + ".",
        "  \t ".join(words),
        phrase.translate(_LOOKALIKES),
        f"Honestly: {phrase.upper().translate(_LOOKALIKES)}!",
        "".join(words),  # words run together: not the phrase
        f"x{phrase}y",  # inside other words: not the phrase
    ]


@pytest.mark.parametrize("phrase", _PHRASES)
def test_the_word_prefilter_finds_exactly_what_searching_every_phrase_finds(phrase: str) -> None:
    for text in _renderings(phrase):
        for phrases in (confidence.WEAK_HEDGES, confidence.STRONG_HEDGES):
            every_search = sum(1 for _word, pattern in confidence._phrase_patterns(phrases) if pattern.search(text))
            assert confidence._phrases_found(text, phrases) == every_search, text
