"""Cost estimates before running: where a prompt would go and what it may cost, without calling anyone."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from shared.ledger import budget
from shared.routing import difficulty
from shared.routing import policy
from shared.routing.catalog import Catalog
from shared.routing.difficulty_estimate import DifficultyEstimate

# Typical English text runs about four characters per token.
CHARS_PER_TOKEN = 4
# What a server bills for one user turn's formatting, typically (OpenAI: 3 per message, 1 for the role, 3 per
# reply); the worst case is shared.ledger.call_bound'.
CHAT_FORMAT_TOKENS = 7
# Without history for a model, assume an answer uses a quarter of max_tokens.
DEFAULT_COMPLETION_SHARE = 0.25


@dataclass(frozen=True)
class CostEstimate:
    """The routing a prompt would get and the range of what it may cost."""

    decision: policy.RoutingDecision
    difficulty: DifficultyEstimate
    prompt_tokens: int
    completion_tokens: int
    expected_cost: Decimal
    worst_case_cost: Decimal


def estimate_cost(
    *,
    catalog: Catalog,
    prompt: str,
    max_tokens: int,
    preference: str,
    model: str | None,
    tier: str | None,
    escalation: bool,
    typical_completion_tokens: Callable[[str], float | None],
    estimator: str = "heuristic",
) -> CostEstimate:
    """Route the prompt as a worker would and price it.

    The expected cost is one call to the chosen model with a typical answer length: the model's recent
    average from `typical_completion_tokens(model)`, else a share of max_tokens. The worst case is the
    bound the ledger would reserve, escalation included.
    """
    estimate = difficulty.estimate_difficulty(prompt, estimator=estimator)
    decision = policy.route(catalog=catalog, score=estimate.score, preference=preference, model=model, tier=tier)
    prompt_tokens = math.ceil(len(prompt) / CHARS_PER_TOKEN) + CHAT_FORMAT_TOKENS
    typical = typical_completion_tokens(decision.model) or max_tokens * DEFAULT_COMPLETION_SHARE
    completion_tokens = max(1, min(max_tokens, round(typical)))
    pinned = model is not None or tier is not None
    return CostEstimate(
        decision=decision,
        difficulty=estimate,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        expected_cost=catalog.get_model(decision.model).cost(prompt_tokens, completion_tokens),
        worst_case_cost=budget.reservation_bound(
            catalog=catalog,
            tiers=policy.candidate_tiers(catalog=catalog, model=model, tier=tier),
            prompt=prompt,
            max_tokens=max_tokens,
            escalation=escalation and not pinned,
        ),
    )
