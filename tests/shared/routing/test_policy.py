from __future__ import annotations

import dataclasses
import math

import pytest

from shared.errors import RoutingError
from shared.routing import policy
from shared.routing.catalog import load_catalog
from tests.support.catalogs import SEED_CATALOG_PATH

TIERS = ("cheap", "mid", "high")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(SEED_CATALOG_PATH)


def test_preferences_are_cost_balanced_quality():
    assert policy.PREFERENCES == ("cost", "balanced", "quality")


def test_balanced_thresholds_are_level_boundaries():
    thresholds = policy.choose_thresholds(tier_count=3, preference="balanced")
    assert all(math.isclose(a, b) for a, b in zip(thresholds, (1 / 3, 2 / 3), strict=True))


def test_cost_preference_raises_thresholds():
    thresholds = policy.choose_thresholds(tier_count=3, preference="cost")
    assert all(math.isclose(a, b) for a, b in zip(thresholds, (1 / 3 + 0.15, 2 / 3 + 0.15), strict=True))


def test_quality_preference_lowers_thresholds():
    thresholds = policy.choose_thresholds(tier_count=3, preference="quality")
    assert all(math.isclose(a, b) for a, b in zip(thresholds, (1 / 3 - 0.15, 2 / 3 - 0.15), strict=True))


def test_shifted_thresholds_stay_inside_unit_interval():
    thresholds = policy.choose_thresholds(tier_count=10, preference="quality")
    assert all(0 < threshold < 1 for threshold in thresholds)


def test_single_tier_has_no_thresholds():
    assert policy.choose_thresholds(tier_count=1) == ()


@pytest.mark.parametrize(
    ("score", "tier"), [(0.0, "cheap"), (0.2, "cheap"), (0.5, "mid"), (0.9, "high"), (1.0, "high")]
)
def test_balanced_maps_levels_to_tiers(score, tier):
    assert policy.choose_tier(score, tiers=TIERS) == tier


def test_score_on_boundary_goes_to_tier_above():
    assert policy.choose_tier(1 / 3, tiers=TIERS) == "mid"


def test_medium_score_goes_mid_when_balanced():
    assert policy.choose_tier(0.4, tiers=TIERS, preference="balanced") == "mid"


def test_medium_score_goes_cheap_with_cost_preference():
    assert policy.choose_tier(0.4, tiers=TIERS, preference="cost") == "cheap"


def test_medium_score_goes_high_with_quality_preference():
    assert policy.choose_tier(0.6, tiers=TIERS, preference="quality") == "high"


def test_high_score_goes_mid_with_cost_preference():
    assert policy.choose_tier(0.7, tiers=TIERS, preference="cost") == "mid"


def test_zero_goes_weakest_and_one_strongest_with_many_tiers():
    tiers = tuple(f"t{i}" for i in range(10))
    assert policy.choose_tier(0.0, tiers=tiers, preference="quality") == "t0"
    assert policy.choose_tier(1.0, tiers=tiers, preference="cost") == "t9"


@pytest.mark.parametrize("score", [-0.01, 1.01, math.nan, True])
def test_score_outside_unit_interval_raises(score):
    with pytest.raises(RoutingError) as excinfo:
        policy.choose_tier(score, tiers=TIERS)
    assert excinfo.value.details["field"] == "score"


def test_unknown_preference_raises(catalog):
    with pytest.raises(RoutingError) as excinfo:
        policy.route(catalog=catalog, score=0.5, preference="cheapest")
    assert excinfo.value.details["field"] == "preference"


def test_route_by_score_picks_tier_model(catalog):
    decision = policy.route(catalog=catalog, score=0.1)
    assert (decision.tier, decision.model, decision.reason) == ("cheap", "gpt-3.5-turbo", "score")


def test_route_by_score_records_score(catalog):
    assert policy.route(catalog=catalog, score=0.5).score == 0.5


def test_route_by_score_escalates_to_next_tier(catalog):
    assert policy.route(catalog=catalog, score=0.5).escalation_tier == "high"


def test_route_at_top_tier_has_no_escalation(catalog):
    assert policy.route(catalog=catalog, score=0.95).escalation_tier is None


def test_route_applies_preference(catalog):
    assert policy.route(catalog=catalog, score=0.4, preference="cost").model == "gpt-3.5-turbo"


def test_forced_model_wins(catalog):
    decision = policy.route(catalog=catalog, score=0.0, model="gpt-4-turbo")
    assert (decision.tier, decision.model, decision.reason) == ("high", "gpt-4-turbo", "forced_model")


def test_forced_model_never_escalates(catalog):
    assert policy.route(catalog=catalog, score=0.0, model="gpt-3.5-turbo").escalation_tier is None


def test_forced_tier_uses_tier_model(catalog):
    decision = policy.route(catalog=catalog, score=0.9, tier="mid")
    assert (decision.tier, decision.model, decision.reason) == ("mid", "gpt-4", "forced_tier")


def test_forced_tier_never_escalates(catalog):
    assert policy.route(catalog=catalog, score=None, tier="cheap").escalation_tier is None


def test_forced_model_and_matching_tier_is_forced_model(catalog):
    decision = policy.route(catalog=catalog, score=None, model="gpt-4", tier="mid")
    assert (decision.model, decision.reason) == ("gpt-4", "forced_model")


def test_forced_model_and_conflicting_tier_raises(catalog):
    with pytest.raises(RoutingError) as excinfo:
        policy.route(catalog=catalog, score=None, model="gpt-4", tier="cheap")
    assert excinfo.value.details["field"] == "tier"


def test_unknown_model_raises(catalog):
    with pytest.raises(RoutingError) as excinfo:
        policy.route(catalog=catalog, score=0.5, model="gpt-7")
    assert excinfo.value.details["field"] == "model"


def test_unknown_tier_raises(catalog):
    with pytest.raises(RoutingError) as excinfo:
        policy.route(catalog=catalog, score=0.5, tier="premium")
    assert excinfo.value.details["field"] == "tier"


def test_route_without_score_or_forcing_raises(catalog):
    with pytest.raises(RoutingError) as excinfo:
        policy.route(catalog=catalog, score=None)
    assert excinfo.value.details["field"] == "score"


def test_route_rejects_out_of_range_score_even_when_forced(catalog):
    with pytest.raises(RoutingError):
        policy.route(catalog=catalog, score=2.0, model="gpt-4")


def test_decision_is_frozen(catalog):
    decision = policy.route(catalog=catalog, score=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.tier = "high"  # type: ignore[misc]


def test_candidate_tiers_for_forced_model(catalog):
    assert policy.candidate_tiers(catalog=catalog, model="gpt-4", tier=None) == ("mid",)


def test_candidate_tiers_for_forced_tier(catalog):
    assert policy.candidate_tiers(catalog=catalog, model=None, tier="high") == ("high",)


def test_candidate_tiers_when_routed_by_score(catalog):
    assert policy.candidate_tiers(catalog=catalog, model=None, tier=None) == TIERS


def test_candidate_tiers_rejects_conflicting_model_and_tier(catalog):
    with pytest.raises(RoutingError):
        policy.candidate_tiers(catalog=catalog, model="gpt-4", tier="high")


def test_escalate_moves_one_tier_up(catalog):
    decision = policy.escalate(catalog=catalog, decision=policy.route(catalog=catalog, score=0.1))
    assert decision is not None
    assert (decision.tier, decision.model, decision.reason) == ("mid", "gpt-4", "escalation")


def test_escalated_decision_can_escalate_again(catalog):
    decision = policy.escalate(catalog=catalog, decision=policy.route(catalog=catalog, score=0.1))
    assert decision is not None
    assert decision.escalation_tier == "high"


def test_escalate_keeps_score(catalog):
    decision = policy.escalate(catalog=catalog, decision=policy.route(catalog=catalog, score=0.1))
    assert decision is not None
    assert decision.score == 0.1


def test_escalate_at_top_tier_is_none(catalog):
    assert policy.escalate(catalog=catalog, decision=policy.route(catalog=catalog, score=0.9)) is None


def test_escalate_forced_choice_is_none(catalog):
    decision = policy.route(catalog=catalog, score=0.1, tier="cheap")
    assert policy.escalate(catalog=catalog, decision=decision) is None


def test_a_tier_ceiling_allows_every_tier_up_to_it(catalog):
    assert catalog.tiers_up_to("mid") == ("cheap", "mid")
    assert catalog.tiers_up_to(None) == ("cheap", "mid", "high")
    with pytest.raises(RoutingError):
        catalog.tiers_up_to("premium")


def test_a_decision_above_the_ceiling_comes_down_to_it(catalog):
    decision = policy.route(catalog=catalog, score=0.9)
    capped = policy.cap(catalog=catalog, decision=decision, max_tier="mid")
    assert (capped.tier, capped.reason, capped.escalation_tier) == ("mid", "budget_ceiling", None)
    within = policy.route(catalog=catalog, score=0.1)
    assert policy.cap(catalog=catalog, decision=within, max_tier="mid") == within
    assert policy.cap(catalog=catalog, decision=within, max_tier="cheap").escalation_tier is None
