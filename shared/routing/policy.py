"""Choose the tier and model for a prompt from its difficulty score; pure.

With n tiers (weakest first) the balanced thresholds are i/n for i = 1..n-1, so with three tiers an easy
prompt goes cheap, a medium one mid and a hard one high. A preference shifts every threshold by
PREFERENCE_SHIFT: up for "cost" (more prompts stay cheap), down for "quality" (more go strong).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared.errors import RoutingError
from shared.routing.catalog import Catalog
from shared.routing.catalog import ModelSpec

PREFERENCES = ("cost", "balanced", "quality")
PREFERENCE_SHIFT = 0.15
_SHIFT_SIGN = {"cost": 1, "balanced": 0, "quality": -1}

# Shifted thresholds are kept this far inside (0, 1), so a score of 0 always goes to the weakest tier
# and a score of 1 to the strongest, whatever the number of tiers.
THRESHOLD_MARGIN = 0.01

Reason = Literal["score", "forced_model", "forced_tier", "escalation", "budget_ceiling"]


@dataclass(frozen=True)
class RoutingDecision:
    """The tier and model chosen for a job, why, and where to escalate an unsure answer."""

    tier: str
    model: str
    reason: Reason
    score: float | None
    escalation_tier: str | None


def choose_thresholds(*, tier_count: int, preference: str = "balanced") -> tuple[float, ...]:
    """Return the n-1 ascending score thresholds between n tiers for a preference."""
    _check_preference(preference)
    if tier_count < 1:
        raise RoutingError("a catalog needs at least one tier", details={"field": "tiers"})
    shift = PREFERENCE_SHIFT * _SHIFT_SIGN[preference]
    return tuple(
        min(1.0 - THRESHOLD_MARGIN, max(THRESHOLD_MARGIN, i / tier_count + shift)) for i in range(1, tier_count)
    )


def choose_tier(score: float, *, tiers: Sequence[str], preference: str = "balanced") -> str:
    """Return the tier for a difficulty score; `tiers` run from weakest to strongest."""
    _check_score(score)
    thresholds = choose_thresholds(tier_count=len(tiers), preference=preference)
    # A score on a threshold belongs to the tier above, as a score of exactly 1/3 is "medium".
    return tiers[sum(1 for threshold in thresholds if score >= threshold)]


def route(
    *,
    catalog: Catalog,
    score: float | None,
    preference: str = "balanced",
    model: str | None = None,
    tier: str | None = None,
) -> RoutingDecision:
    """Decide the tier and model for a job: a forced model, else a forced tier, else by score.

    Raises RoutingError for an unknown model, tier or preference, a score outside [0, 1], no score when
    nothing is forced, or a forced model that does not serve the forced tier.
    """
    _check_preference(preference)
    if score is not None:
        _check_score(score)
    forced = _forced_model(catalog=catalog, model=model, tier=tier)
    if forced is not None:
        # A forced choice is pinned: the caller asked for it, so an unsure answer is not escalated.
        return RoutingDecision(
            tier=forced.tier,
            model=forced.name,
            reason="forced_model" if model is not None else "forced_tier",
            score=score,
            escalation_tier=None,
        )
    if score is None:
        raise RoutingError("a difficulty score is needed unless a model or tier is forced", details={"field": "score"})
    chosen = choose_tier(score, tiers=catalog.tiers, preference=preference)
    return RoutingDecision(
        tier=chosen,
        model=catalog.model_for_tier(chosen).name,
        reason="score",
        score=score,
        escalation_tier=catalog.tier_above(chosen),
    )


def candidate_tiers(*, catalog: Catalog, model: str | None, tier: str | None) -> tuple[str, ...]:
    """Return every tier a job may use, escalation included, to budget it before it runs."""
    forced = _forced_model(catalog=catalog, model=model, tier=tier)
    return (forced.tier,) if forced is not None else catalog.tiers


def escalate(*, catalog: Catalog, decision: RoutingDecision) -> RoutingDecision | None:
    """Return the decision one tier up, or None when the decision cannot escalate."""
    if decision.escalation_tier is None:
        return None
    tier = decision.escalation_tier
    return RoutingDecision(
        tier=tier,
        model=catalog.model_for_tier(tier).name,
        reason="escalation",
        score=decision.score,
        escalation_tier=catalog.tier_above(tier),
    )


def _forced_model(*, catalog: Catalog, model: str | None, tier: str | None) -> ModelSpec | None:
    if tier is not None:
        catalog.check_tier(tier)
    if model is None:
        return catalog.model_for_tier(tier) if tier is not None else None
    spec = catalog.get_model(model)
    if tier is not None and spec.tier != tier:
        raise RoutingError(
            f"model {model!r} serves tier {spec.tier!r}, not {tier!r}",
            details={"field": "tier", "model_tier": spec.tier},
        )
    return spec


def _check_preference(preference: str) -> None:
    if preference not in PREFERENCES:
        raise RoutingError(
            f"unknown preference {preference!r}", details={"field": "preference", "known": list(PREFERENCES)}
        )


def _check_score(score: float) -> None:
    # bool is an int subclass and NaN fails every comparison: reject both explicitly.
    if isinstance(score, bool) or not isinstance(score, int | float) or math.isnan(score) or not 0 <= score <= 1:
        raise RoutingError(f"difficulty score must be in [0, 1], got {score!r}", details={"field": "score"})


def cap(*, catalog: Catalog, decision: RoutingDecision, max_tier: str) -> RoutingDecision:
    """Keep `decision` at or below `max_tier` (a budget ceiling), escalation included."""
    allowed = catalog.tiers_up_to(max_tier)
    if decision.tier not in allowed:
        return RoutingDecision(
            tier=max_tier,
            model=catalog.model_for_tier(max_tier).name,
            reason="budget_ceiling",
            score=decision.score,
            escalation_tier=None,
        )
    if decision.escalation_tier is not None and decision.escalation_tier not in allowed:
        return dataclasses.replace(decision, escalation_tier=None)
    return decision
