"""Judge how sure an answer looks, to decide whether to escalate it to a stronger tier; pure.

The score is built in three steps:

1. Base: TEXT_BASE (0.85) from the text alone, which never proves an answer right. With token logprobs,
   0.4 * 0.85 + 0.6 * logprob instead, where logprob = 0.75 * exp(mean) + 0.25 * exp(min / 4): exp(mean)
   is the geometric-mean token probability, and the minimum catches one badly guessed token, softened by
   /4 because a single rare word is normal in a fluent answer.
2. Weak hedges: subtract 0.3 per distinct weak hedge ("possibly", "maybe", "I think" ...), so one stray
   "probably" in a complete answer is tolerated but two make it unsure whatever the logprobs.
3. Caps that no logprob can lift: empty answer 0; truncated (finish_reason "length") or filtered 0.2;
   a strong hedge or refusal ("I'm not sure", "I don't know", "as an AI" ...) 0.3; too short 0.4.

An answer is unsure when its score is below the threshold (DEFAULT_THRESHOLD = 0.5).

A truncated answer scores low, but it is cut at the request's own max_tokens, which a stronger tier gets too:
escalation leaves it alone (cut_at_max_tokens) and the job reports it as truncated instead.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import RoutingError

DEFAULT_THRESHOLD = 0.5

TEXT_BASE = 0.85
WEAK_HEDGE_PENALTY = 0.3

TEXT_WEIGHT = 0.4
MEAN_LOGPROB_WEIGHT = 0.75
MIN_LOGPROB_SCALE = 4.0
# Below this logprob score the answer is reported as "low_logprob".
LOW_LOGPROB_SCORE = 0.5

TRUNCATED_CAP = 0.2
STRONG_HEDGE_CAP = 0.3
TOO_SHORT_CAP = 0.4

# A prompt this long expects a real answer: one under LONG_PROMPT_MIN_RATIO of its length is too short.
LONG_PROMPT_CHARS = 400
LONG_PROMPT_MIN_RATIO = 0.05

TRUNCATING_FINISH_REASONS = ("length", "content_filter")
# The finish reason of an answer that used all of its max_tokens.
MAX_TOKENS_FINISH_REASON = "length"

# Phrases are matched whole and case-insensitively, after curly apostrophes become straight ones.
STRONG_HEDGES = (
    "i'm not sure",
    "i am not sure",
    "i'm unsure",
    "i am unsure",
    "not entirely sure",
    "i don't know",
    "i do not know",
    "i have no idea",
    "i cannot",
    "i can't answer",
    "i can't help",
    "i can't provide",
    "i'm unable",
    "i am unable",
    "it's unclear",
    "it is unclear",
    "not certain",
    "hard to say",
    "as an ai",
)

WEAK_HEDGES = (
    "possibly",
    "maybe",
    "perhaps",
    "probably",
    "might be",
    "i think",
    "i believe",
    "i guess",
    "i suppose",
)


@dataclass(frozen=True)
class AnswerConfidence:
    """How sure an answer looks, in [0, 1], and the signals that lowered it."""

    score: float
    reasons: tuple[str, ...]

    def is_unsure(self, threshold: float = DEFAULT_THRESHOLD) -> bool:
        """Return True when the score is below `threshold`."""
        _check_threshold(threshold)
        return self.score < threshold


def is_unsure(confidence: AnswerConfidence, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Return True when the answer's confidence is below `threshold`."""
    return confidence.is_unsure(threshold)


def cut_at_max_tokens(finish_reason: str | None) -> bool:
    """Tell whether an answer stopped at the request's max_tokens: no stronger tier answers it whole.

    Every tier is called with the same max_tokens, and stronger tiers answer at greater length, so
    re-asking only pays more for another cut answer; the caller's remedy is a larger max_tokens.
    """
    return finish_reason == MAX_TOKENS_FINISH_REASON


def assess_answer(
    *,
    prompt: str,
    answer: str,
    finish_reason: str | None,
    logprobs: Sequence[float] | None = None,
    min_answer_chars: int = 20,
) -> AnswerConfidence:
    """Assess how confident an answer looks from its text, finish reason and token logprobs."""
    if min_answer_chars < 0:
        raise RoutingError("min_answer_chars must be >= 0", details={"field": "min_answer_chars"})
    text = answer.strip()
    if not text:
        return AnswerConfidence(score=0.0, reasons=("empty",))

    reasons: list[str] = []
    score = TEXT_BASE
    lp_score = _logprob_score(logprobs)
    if lp_score is not None:
        score = TEXT_WEIGHT * TEXT_BASE + (1.0 - TEXT_WEIGHT) * lp_score
        if lp_score < LOW_LOGPROB_SCORE:
            reasons.append("low_logprob")

    normalized = text.replace("\u2019", "'").replace("\u2018", "'")
    weak_hedges = _phrases_found(normalized, WEAK_HEDGES)
    if weak_hedges:
        reasons.append("hedging")
        score = max(0.0, score - WEAK_HEDGE_PENALTY * weak_hedges)

    caps: list[tuple[str, float]] = []
    if finish_reason in TRUNCATING_FINISH_REASONS:
        caps.append(("truncated" if cut_at_max_tokens(finish_reason) else "filtered", TRUNCATED_CAP))
    if _phrases_found(normalized, STRONG_HEDGES):
        caps.append(("hedging", STRONG_HEDGE_CAP))
    if _too_short(prompt=prompt, answer=text, min_answer_chars=min_answer_chars):
        caps.append(("too_short", TOO_SHORT_CAP))
    for reason, cap in caps:
        score = min(score, cap)
        if reason not in reasons:
            reasons.append(reason)
    return AnswerConfidence(score=score, reasons=tuple(reasons))


def _logprob_score(logprobs: Sequence[float] | None) -> float | None:
    # Upstreams occasionally send NaN or -inf, or a tiny positive value from rounding: drop the
    # non-finite ones and read the rest as at most 0 rather than fail the assessment.
    values = [min(0.0, value) for value in logprobs or () if math.isfinite(value)]
    if not values:
        return None
    mean_term = math.exp(sum(values) / len(values))
    min_term = math.exp(min(values) / MIN_LOGPROB_SCALE)
    return MEAN_LOGPROB_WEIGHT * mean_term + (1.0 - MEAN_LOGPROB_WEIGHT) * min_term


def _too_short(*, prompt: str, answer: str, min_answer_chars: int) -> bool:
    if len(answer) < min_answer_chars:
        return True
    prompt_chars = len(prompt.strip())
    return prompt_chars >= LONG_PROMPT_CHARS and len(answer) < LONG_PROMPT_MIN_RATIO * prompt_chars


def _check_threshold(threshold: float) -> None:
    if not 0 <= threshold <= 1:
        raise RoutingError(f"threshold must be in [0, 1], got {threshold!r}", details={"field": "threshold"})


def _phrases_found(text: str, phrases: tuple[str, ...]) -> int:
    """Return how many of `phrases` occur in `text` (case-insensitive, words apart by any whitespace).

    A phrase is searched for only when its longest word occurs in the casefolded text: a cheap, exact test
    (for these ASCII phrases casefolding maps every character a case-insensitive match accepts onto the
    phrase's own, once the dotless i is read as i) that spares most of the regular-expression searches.
    """
    folded = text.casefold().replace("\u0131", "i")
    return sum(1 for word, pattern in _phrase_patterns(phrases) if word in folded and pattern.search(text))


@functools.cache
def _phrase_patterns(phrases: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    # Compiled on first use, not at import; any run of whitespace may separate a phrase's words.
    return tuple(
        (
            max(phrase.split(), key=len).casefold(),
            re.compile(r"(?<!\w)" + r"\s+".join(re.escape(word) for word in phrase.split()) + r"(?!\w)", re.IGNORECASE),
        )
        for phrase in phrases
    )
