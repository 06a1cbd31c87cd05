"""What every difficulty estimator returns and how a score maps to a level.

The estimators themselves (shared.routing.difficulty's heuristic, shared.routing.learned_estimator) build on
these types, and shared.routing.difficulty registers both: the types live apart so that neither estimator
has to import the registry that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

EASY_MAX = 1 / 3
MEDIUM_MAX = 2 / 3


@dataclass(frozen=True)
class DifficultyEstimate:
    """A difficulty score in [0, 1], its level, and the components it was built from."""

    score: float
    level: str
    components: dict[str, float]


class DifficultyEstimator(Protocol):
    """Anything that scores a prompt's difficulty; register implementations in shared.routing.difficulty."""

    name: str

    def estimate(self, prompt: str) -> DifficultyEstimate:
        """Estimate the difficulty of a prompt."""
        ...


def choose_level(score: float) -> str:
    """Return "easy", "medium" or "hard" for a score in [0, 1]."""
    if score < EASY_MAX:
        return "easy"
    if score < MEDIUM_MAX:
        return "medium"
    return "hard"
