"""Deterministic answers: longer and surer on stronger tiers, unsure when hedging; pure."""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from shared.upstream.token_count import TOKEN_RE
from shared.upstream.token_count import count_tokens

# Natural answer length in tokens: the weakest tier answers in LEN_WEAK, the strongest in LEN_STRONG.
LEN_WEAK = (30, 80)
LEN_STRONG = (120, 250)
HEDGES = (
    "I'm not sure about this one.",
    "I don't know the answer to that.",
    "I'm not sure, it depends.",
    "Sorry, I don't know.",
    "I'm not sure what you mean.",
    "I don't know enough to answer.",
)
OPENERS = (
    "Here is a short answer about {topic}.",
    "Good question about {topic}.",
    "The key point about {topic} is simple.",
    "Let me explain {topic} briefly.",
    "There are a few things to know about {topic}.",
)
BODY = (
    "In most cases the simplest approach works well and is easy to check.",
    "Start by stating the assumptions clearly, then test each one against a small example.",
    "The main trade-off is between speed and accuracy, so measure both before choosing.",
    "A common mistake is to optimize too early, before the real bottleneck is known.",
    "It helps to split the problem into smaller parts and solve each part on its own.",
    "When the input grows, the cost usually grows with it, so keep an eye on the worst case.",
    "Good names and short functions make the result easier to read and to maintain.",
    "If two options look equal, prefer the one that is easier to undo later.",
    "Write down what success looks like first; it makes every later choice easier.",
    "Most of the time the documentation already answers the question, so read it closely.",
    "A quick experiment often settles a debate faster than a long discussion.",
    "Edge cases matter: empty inputs, very large values and repeated items deserve a test.",
    "The same idea applies at every scale, from a single function to a whole system.",
    "Keep the data and the logic apart, so that each can change without breaking the other.",
    "A small, honest estimate beats a precise guess that nobody can verify.",
    "Caching can hide a slow step, but it also adds state that must be kept correct.",
    "For {topic}, the details depend on the context, but the principle stays the same.",
    "In practice, {topic} is easiest to understand through a concrete example.",
    "People who work with {topic} every day tend to rely on a few simple rules.",
    "A careful look at the numbers usually shows where most of the effort should go.",
    "Each step should leave the system in a state that is easy to inspect.",
    "Errors are cheaper to fix when they are caught close to where they happen.",
    "The clearest explanation is often the one that uses the fewest new terms.",
    "Think about who will read the answer, and what they already know.",
)
CLOSERS = (
    "In short, {topic} comes down to clear definitions and careful checks.",
    "I hope this helps with {topic}.",
    "That covers the essentials of {topic}.",
    "Overall, the simple approach is a good place to start.",
)
# Stand-in tokens for top_logprobs; more than the API's maximum of 20 plus the chosen token.
_ALTERNATIVE_TEXT = "the a an this it that and to of in is are was can may for with on as be by or not we you so"
_ALTERNATIVES = tuple(_ALTERNATIVE_TEXT.split())
_STOPWORD_TEXT = """
about above after again also because been before being below between both could does doing during each
explain from have having here into just like more most much only other please same should some such than
that their them then there these they this those through under until very what when where which while
will with would your tell give write show
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_HARD_WORD_TEXT = """
prove proof proves derive derives derivation analyze analyse analysis optimize optimise optimization
optimal theorem lemma complexity rigorous rigorously formally asymptotic integral
"""
_HARD_WORDS = frozenset(_HARD_WORD_TEXT.split())
_WORD_RE = re.compile(r"[^\W\d_]{4,}")


@dataclass(frozen=True)
class Answer:
    """A generated answer: its text cut into tokens, why it stopped, and how sure the model is."""

    text: str
    pieces: tuple[str, ...]
    completion_tokens: int
    finish_reason: str
    confidence: float
    logprobs: dict[str, Any] | None


def _digest_rng(*parts: object) -> random.Random:
    # hashlib, not hash(): the answer must not change with PYTHONHASHSEED or between processes.
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def estimate_difficulty(prompt: str) -> float:
    """Estimate how hard a prompt looks, from 0 (trivial) to 1 (hard)."""
    length_part = min(1.0, count_tokens(prompt) / 400) * 0.35
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    hard_part = min(0.45, 0.15 * len(words & _HARD_WORDS))
    code_part = 0.2 if "```" in prompt else 0.0
    return min(1.0, length_part + hard_part + code_part)


def _strength(tier_index: int, tier_count: int) -> float:
    return tier_index / (tier_count - 1) if tier_count > 1 else 1.0


def estimate_confidence(*, tier_index: int, tier_count: int, prompt: str, seed: int) -> float:
    """Estimate a tier's confidence in its answer: higher on stronger tiers, lower on harder prompts."""
    strength = _strength(tier_index, tier_count)
    # Hard prompts cost a weak tier up to 0.45 and the strongest only 0.12.
    penalty = estimate_difficulty(prompt) * (0.45 - 0.33 * strength)
    # The jitter depends on the prompt only, so the order between tiers always holds.
    jitter = (_digest_rng(seed, "confidence", prompt).random() - 0.5) * 0.06
    return min(0.99, max(0.05, 0.6 + 0.32 * strength - penalty + jitter))


def _topic(prompt: str) -> str:
    words = [w for w in _WORD_RE.findall(prompt[:2000]) if w.lower() not in _STOPWORDS]
    if not words:
        return "this question"
    best = max(range(len(words)), key=lambda i: len(words[i]))
    # Two neighbouring content words ("binary search") name a topic better than one.
    if best + 1 < len(words) and prompt.find(words[best] + " " + words[best + 1]) >= 0:
        return f"{words[best]} {words[best + 1]}"
    if best > 0 and prompt.find(words[best - 1] + " " + words[best]) >= 0:
        return f"{words[best - 1]} {words[best]}"
    return words[best]


def _natural_text(*, model: str, tier_index: int, tier_count: int, prompt: str, seed: int) -> str:
    strength = _strength(tier_index, tier_count)
    low = LEN_WEAK[0] + (LEN_STRONG[0] - LEN_WEAK[0]) * strength
    high = LEN_WEAK[1] + (LEN_STRONG[1] - LEN_WEAK[1]) * strength
    # The length share depends on the prompt, not the model, so stronger tiers are always longer.
    share = 0.75 * _digest_rng(seed, "length", prompt).random() + 0.25 * min(1.0, count_tokens(prompt) / 500)
    target = round(low + (high - low) * share)
    rng = _digest_rng(seed, model, prompt)
    topic = _topic(prompt)
    body = list(BODY)
    rng.shuffle(body)
    closer = rng.choice(CLOSERS).format(topic=topic)
    sentences = [rng.choice(OPENERS).format(topic=topic)]
    used = count_tokens(sentences[0])
    room = target - count_tokens(closer)
    for index in range(len(body) * 4):
        if used >= room:
            break
        sentence = body[index % len(body)].format(topic=topic)
        sentences.append(sentence)
        used += count_tokens(sentence)
    sentences.append(closer)
    return " ".join(sentences)


def _split_pieces(text: str) -> tuple[str, ...]:
    # Each piece is one token with the whitespace before it, so the pieces join back into the text.
    pieces = []
    start = 0
    for match in TOKEN_RE.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    return tuple(pieces)


def _logprob_entry(piece: str, logprob: float, *, top: int, rng: random.Random) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "token": piece,
        "logprob": logprob,
        "bytes": list(piece.encode()),
        "top_logprobs": [],
    }
    if top:
        rest = max(1e-9, 1.0 - math.exp(logprob))
        prefix = " " if piece.startswith(" ") else ""
        words = [w for w in rng.sample(_ALTERNATIVES, top) if prefix + w != piece][: top - 1]
        choices = [(piece, logprob)]
        # Alternatives share what the chosen token left, halving each time, so the total stays below 1.
        choices += [(prefix + w, round(math.log(rest * 0.5 ** (i + 1)), 6)) for i, w in enumerate(words)]
        choices.sort(key=lambda choice: choice[1], reverse=True)
        entry["top_logprobs"] = [
            {"token": token, "logprob": lp, "bytes": list(token.encode())} for token, lp in choices
        ]
    return entry


def _logprobs(pieces: tuple[str, ...], *, confidence: float, top: int, rng: random.Random) -> dict[str, Any]:
    mean = math.log(confidence)
    content = []
    for piece in pieces:
        # A Gamma(2, 1/2) factor (mean 1, drawn as half the sum of two exponentials, cheaper than
        # gammavariate) keeps the average near ln(confidence) while most tokens stay likely.
        factor = -math.log((1.0 - rng.random()) * (1.0 - rng.random())) / 2
        logprob = round(max(-30.0, mean * factor), 6)
        content.append(_logprob_entry(piece, logprob, top=top, rng=rng))
    return {"content": content}


def create_answer(
    *,
    model: str,
    tier_index: int,
    tier_count: int,
    prompt: str,
    max_tokens: int | None,
    seed: int,
    hedge: bool = False,
    want_logprobs: bool = False,
    top_logprobs: int = 0,
) -> Answer:
    """Create the answer `model` gives to `prompt`; the same inputs always give the same answer."""
    if hedge:
        rng = _digest_rng(seed, model, prompt, "hedge")
        text = rng.choice(HEDGES)
        confidence = 0.1 + 0.2 * rng.random()
    else:
        text = _natural_text(model=model, tier_index=tier_index, tier_count=tier_count, prompt=prompt, seed=seed)
        confidence = estimate_confidence(tier_index=tier_index, tier_count=tier_count, prompt=prompt, seed=seed)
    pieces = _split_pieces(text)
    finish_reason = "stop"
    if max_tokens is not None and len(pieces) > max_tokens:
        pieces = pieces[:max_tokens]
        text = "".join(pieces)
        finish_reason = "length"
    logprobs = None
    if want_logprobs:
        rng = _digest_rng(seed, model, prompt, "logprobs", hedge)
        logprobs = _logprobs(pieces, confidence=confidence, top=top_logprobs, rng=rng)
    return Answer(
        text=text,
        pieces=pieces,
        completion_tokens=len(pieces),
        finish_reason=finish_reason,
        confidence=round(confidence, 4),
        logprobs=logprobs,
    )
