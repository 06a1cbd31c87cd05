"""Estimate how hard a prompt is, as a score in [0, 1]; pure and deterministic.

The documented heuristic is score = 0.4 * length + 0.4 * keywords + 0.2 * structure, where:

- length = 1 - exp(-words / 80): ~0.06 for 5 words, ~0.46 for 50, ~0.92 for 200, ~0.98 for 300.
- keywords = 0.3 + 0.7 * (1 - 0.6**c) - 0.3 * (1 - 0.5**s), clamped to [0, 1], where c and s count the
  distinct complex and simple terms found (whole words, case-insensitive): a neutral prompt scores 0.3,
  complex terms pull it towards 1 and simple terms towards 0.
- structure = 1 - exp(-points), where points add 0.25 per question mark beyond the first, 0.15 per list
  item, 0.6 per code block and 0.2 per paragraph beyond the first.

The level is "easy" below 1/3, "medium" below 2/3 and "hard" otherwise (shared.routing.difficulty_estimate).
"""

from __future__ import annotations

import functools
import math
import re

from shared.errors import InvalidInput
from shared.errors import RoutingError
from shared.routing import learned_estimator
from shared.routing.difficulty_estimate import DifficultyEstimate
from shared.routing.difficulty_estimate import DifficultyEstimator
from shared.routing.difficulty_estimate import choose_level

LENGTH_WEIGHT = 0.4
KEYWORDS_WEIGHT = 0.4
STRUCTURE_WEIGHT = 0.2

# Words at which the length component reaches 1 - 1/e (~0.63).
LENGTH_SCALE_WORDS = 80.0

KEYWORDS_NEUTRAL = 0.3
# Each further distinct complex (simple) term closes this share of the remaining gap to 1 (to 0), so
# repeating the same word cannot push a prompt up a level.
COMPLEX_TERM_RETENTION = 0.6
SIMPLE_TERM_RETENTION = 0.5

EXTRA_QUESTION_POINTS = 0.25
LIST_ITEM_POINTS = 0.15
CODE_BLOCK_POINTS = 0.6
EXTRA_PARAGRAPH_POINTS = 0.2

# Inflected forms are listed explicitly: matching is on whole words, so "designing" does not match "design".
COMPLEX_TERMS = (
    "prove",
    "proof",
    "derive",
    "derivation",
    "analyze",
    "analyse",
    "analysis",
    "optimize",
    "optimise",
    "optimization",
    "algorithm",
    "algorithms",
    "architecture",
    "trade-off",
    "trade-offs",
    "complexity",
    "theorem",
    "design",
    "implement",
    "implementation",
    "debug",
    "refactor",
    "compare",
    "contrast",
    "evaluate",
    "explain",
    "justify",
    "critique",
    "concurrency",
    "distributed",
    "scalable",
    "asymptotic",
    "rigorous",
    "big-o",
    "edge cases",
    "step by step",
    "in depth",
    "in detail",
    "pros and cons",
)

SIMPLE_TERMS = (
    "what is",
    "what's",
    "what are",
    "who",
    "when",
    "where is",
    "define",
    "definition of",
    "list",
    "translate",
    "hello",
    "hi",
    "hey",
    "thanks",
    "thank you",
    "capital of",
    "how many",
    "spell",
    "synonym",
    "meaning of",
    "yes or no",
)

_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+\S")
_FENCE = re.compile(r"^\s*(?:```|~~~)")
_INDENTED = re.compile(r"^(?: {4}|\t)\s*\S")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


class HeuristicEstimator:
    """The documented length + keywords + structure heuristic; stateless."""

    name = "heuristic"

    def estimate(self, prompt: str) -> DifficultyEstimate:
        """Estimate the difficulty of a prompt."""
        if not isinstance(prompt, str):
            raise InvalidInput("prompt must be a string", details={"field": "prompt"})
        components = {
            "length": estimate_length(prompt),
            "keywords": estimate_keywords(prompt),
            "structure": estimate_structure(prompt),
        }
        score = (
            LENGTH_WEIGHT * components["length"]
            + KEYWORDS_WEIGHT * components["keywords"]
            + STRUCTURE_WEIGHT * components["structure"]
        )
        score = _clamp(score)
        return DifficultyEstimate(score=score, level=choose_level(score), components=components)


# "learned" reads its artifact on first use, not here (shared/routing/learned_estimator.py).
ESTIMATORS: dict[str, type[DifficultyEstimator]] = {
    "heuristic": HeuristicEstimator,
    "learned": learned_estimator.LearnedEstimator,
}


@functools.cache
def get_estimator(name: str) -> DifficultyEstimator:
    """Return the estimator registered as `name`, or raise RoutingError."""
    try:
        estimator_class = ESTIMATORS[name]
    except KeyError:
        raise RoutingError(
            f"unknown difficulty estimator {name!r}",
            details={"field": "estimator", "known": list(ESTIMATORS)},
        ) from None
    return estimator_class()


def estimate_difficulty(prompt: str, *, estimator: str = "heuristic") -> DifficultyEstimate:
    """Estimate the difficulty of a prompt with the named estimator."""
    return get_estimator(estimator).estimate(prompt)


def estimate_length(prompt: str) -> float:
    """Return the length component: a saturating curve of the word count."""
    return 1.0 - math.exp(-len(prompt.split()) / LENGTH_SCALE_WORDS)


def estimate_keywords(prompt: str) -> float:
    """Return the keywords component: complex terms raise it, simple terms lower it."""
    text = _normalize_quotes(prompt)
    complex_hits = sum(1 for pattern in _term_patterns(COMPLEX_TERMS) if pattern.search(text))
    simple_hits = sum(1 for pattern in _term_patterns(SIMPLE_TERMS) if pattern.search(text))
    raised = (1.0 - KEYWORDS_NEUTRAL) * (1.0 - COMPLEX_TERM_RETENTION**complex_hits)
    lowered = KEYWORDS_NEUTRAL * (1.0 - SIMPLE_TERM_RETENTION**simple_hits)
    return _clamp(KEYWORDS_NEUTRAL + raised - lowered)


def estimate_structure(prompt: str) -> float:
    """Return the structure component from questions, list items, code blocks and paragraphs."""
    questions = prompt.count("?")
    list_items = 0
    code_blocks = 0
    fences = 0
    in_fence = False
    in_indented = False
    after_blank = True
    for line in prompt.splitlines():
        if _FENCE.match(line):
            fences += 1
            in_fence = not in_fence
            in_indented = False
        elif in_fence:
            pass
        elif _LIST_ITEM.match(line):
            list_items += 1
            in_indented = False
        elif _INDENTED.match(line) and (in_indented or after_blank):
            # As in Markdown, indented code starts after a blank line (otherwise the line continues a
            # paragraph or a list item), and a run of indented lines is one block however long.
            code_blocks += 0 if in_indented else 1
            in_indented = True
        elif line.strip():
            in_indented = False
        after_blank = not line.strip()
    # An unclosed fence still opens a block of code.
    code_blocks += (fences + 1) // 2
    paragraphs = sum(1 for block in _PARAGRAPH_BREAK.split(prompt.strip()) if block.strip())
    points = (
        EXTRA_QUESTION_POINTS * max(0, questions - 1)
        + LIST_ITEM_POINTS * list_items
        + CODE_BLOCK_POINTS * code_blocks
        + EXTRA_PARAGRAPH_POINTS * max(0, paragraphs - 1)
    )
    return 1.0 - math.exp(-points)


@functools.cache
def _term_patterns(terms: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    # Compiled on first use, not at import; spaces and hyphens inside a term match any spacing or
    # hyphenation ("trade-off", "trade off", "tradeoff").
    patterns = []
    for term in terms:
        words = re.split(r"[\s-]+", term)
        body = r"[\s-]*".join(re.escape(word) for word in words)
        patterns.append(re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE))
    return tuple(patterns)


def _normalize_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
