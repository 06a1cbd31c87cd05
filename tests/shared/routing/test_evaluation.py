from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import InvalidInput
from shared.routing import evaluation


def _outcomes(strong: list[float], weak: list[float]) -> evaluation.Outcomes:
    return evaluation.Outcomes(strong=np.asarray(strong, dtype=float), weak=np.asarray(weak, dtype=float))


def _oracle_case() -> tuple[np.ndarray, evaluation.Outcomes]:
    # Ten prompts: the strong model wins on two, both models are right on the other eight.
    strong = [1.0] * 10
    weak = [0.0, 0.0] + [1.0] * 8
    scores = np.asarray([0.99, 0.98, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    return scores, _outcomes(strong, weak)


def test_curve_runs_from_no_strong_calls_to_all():
    scores, outcomes = _oracle_case()
    curve = evaluation.quality_curve(scores, outcomes)
    assert curve.share[0] == 0.0
    assert curve.share[-1] == 1.0
    assert np.allclose(curve.share, np.linspace(0, 1, 11))


def test_pgr_is_zero_for_always_weak_and_one_for_always_strong():
    scores, outcomes = _oracle_case()
    curve = evaluation.quality_curve(scores, outcomes)
    assert curve.pgr[0] == 0.0
    assert curve.pgr[-1] == 1.0


def test_perfect_oracle_apgr_and_cpt():
    scores, outcomes = _oracle_case()
    curve = evaluation.quality_curve(scores, outcomes)
    # PGR is 0, 0.5, then 1 from 20 % of strong calls on: area 0.025 + 0.075 + 0.8.
    assert math.isclose(evaluation.apgr(curve), 0.9)
    assert math.isclose(evaluation.cpt(curve, 0.5), 0.1)
    assert math.isclose(evaluation.cpt(curve, 0.8), 0.16)


def test_when_every_prompt_gains_any_order_is_the_diagonal():
    outcomes = _outcomes([1.0] * 20, [0.0] * 20)
    scores = np.random.default_rng(3).random(20)
    curve = evaluation.quality_curve(scores, outcomes)
    assert math.isclose(evaluation.apgr(curve), 0.5)
    assert math.isclose(evaluation.cpt(curve, 0.5), 0.5)
    assert math.isclose(evaluation.cpt(curve, 0.8), 0.8)


def test_inverted_oracle_is_worse_than_random():
    scores, outcomes = _oracle_case()
    result = evaluation.report(-scores, outcomes, threshold=0.5)
    assert result.apgr < 0.5
    assert result.cpt50 > 0.5


def test_random_router_is_about_one_half():
    rng = np.random.default_rng(11)
    strong = (rng.random(3000) < 0.8).astype(float)
    weak = (rng.random(3000) < 0.6).astype(float)
    result = evaluation.random_report(_outcomes(list(strong), list(weak)))
    assert abs(result.apgr - 0.5) < 0.03
    assert abs(result.cpt50 - 0.5) < 0.05


def test_cpt_is_one_when_the_target_is_never_reached():
    curve = evaluation.Curve(share=np.array([0.0, 0.5, 1.0]), quality=np.zeros(3), pgr=np.array([0.0, 0.2, 0.4]))
    assert evaluation.cpt(curve, 0.5) == 1.0


def test_quality_and_cost_at_the_threshold():
    outcomes = evaluation.Outcomes(
        strong=np.array([1.0, 1.0]),
        weak=np.array([0.0, 1.0]),
        strong_cost=np.array([10.0, 10.0]),
        weak_cost=np.array([1.0, 1.0]),
    )
    result = evaluation.report(np.array([0.9, 0.1]), outcomes, threshold=0.5)
    assert result.threshold_share == 0.5
    assert result.threshold_quality == 1.0
    assert result.threshold_pgr == 1.0
    assert result.threshold_cost_usd == 5.5


def test_pooled_covers_only_the_binary_benchmarks():
    rows = [
        {"benchmark": "a", "metric": "correct_0_1", "strong_score": 1.0, "weak_score": float(i % 2), "prompt": "x"}
        for i in range(10)
    ] + [{"benchmark": "judge", "metric": "judge_score_1_10", "strong_score": 9.0, "weak_score": 7.0, "prompt": "y"}]
    reports = evaluation.group_reports(
        rows, np.linspace(0, 1, len(rows)), threshold=0.5, strong_model="s", weak_model="w"
    )
    assert set(reports) == {"a", "judge", "pooled"}
    assert reports["pooled"].n == 10


def test_scores_must_match_outcomes():
    _, outcomes = _oracle_case()
    with pytest.raises(InvalidInput):
        evaluation.quality_curve(np.zeros(3), outcomes)


def test_split_is_stratified_and_independent_of_row_order():
    rows = [{"id": f"{name}-{i}", "benchmark": name, "prompt": str(i)} for name in ("a", "b") for i in range(50)]
    train, held = evaluation.split_rows(rows, holdout=0.2, seed=5)
    train_again, held_again = evaluation.split_rows(list(reversed(rows)), holdout=0.2, seed=5)
    assert sorted(row["id"] for row in held) == sorted(row["id"] for row in held_again)
    assert sum(1 for row in held if row["benchmark"] == "a") == 10
    assert len(train) + len(held) == len(rows)
    assert len(train_again) == len(train)


def test_calibrated_threshold_hits_the_target_share():
    scores = np.random.default_rng(2).random(1000)
    threshold = evaluation.calibrate_threshold(scores, strong_share=0.3)
    assert abs((scores >= threshold).mean() - 0.3) < 0.002


def test_operating_points_match_the_routing_thresholds():
    from shared.routing import learned_estimator
    from shared.routing import policy

    for preference, shares in learned_estimator.OPERATING_POINTS.items():
        low, high = policy.choose_thresholds(tier_count=3, preference=preference)
        assert np.allclose(shares, (low, high - low, 1 - high), atol=1e-3)


def _priced_rows() -> list[dict[str, object]]:
    # Three models, weakest first; the strongest is right everywhere, the cheapest only on the easy half.
    rows = []
    for i in range(6):
        easy = i < 3
        rows.append(
            {
                "prompt": str(i),
                "scores": {"small": float(easy), "middle": float(easy or i == 3), "large": 1.0},
                "costs_usd": {"small": 0.001, "middle": 0.01, "large": 0.1},
            }
        )
    return rows


def test_tier_policy_follows_the_routing_thresholds():
    rows = _priced_rows()
    # Scores in the cheap, mid and high bands of the balanced thresholds (1/3 and 2/3).
    scores = np.asarray([0.1, 0.1, 0.1, 0.5, 0.9, 0.9])
    points, singles = evaluation.tier_policy(rows, scores, tier_models=["small", "middle", "large"])
    balanced = next(point for point in points if point.preference == "balanced")
    assert balanced.tier_shares == pytest.approx((0.5, 1 / 6, 1 / 3))
    assert balanced.quality == pytest.approx(1.0)
    assert balanced.cost_usd == pytest.approx((3 * 0.001 + 0.01 + 2 * 0.1) / 6)
    assert [single.model for single in singles] == ["small", "middle", "large"]
    assert singles[-1].cost_usd == pytest.approx(0.1)
    assert singles[0].quality == pytest.approx(0.5)


def test_tier_policy_preferences_trade_cost_for_quality():
    rows = _priced_rows()
    scores = np.asarray([0.05, 0.25, 0.45, 0.55, 0.75, 0.95])
    points = {
        point.preference: point
        for point in evaluation.tier_policy(rows, scores, tier_models=["small", "middle", "large"])[0]
    }
    assert points["cost"].cost_usd < points["balanced"].cost_usd < points["quality"].cost_usd


def test_tier_policy_needs_every_tier_model_priced():
    rows = _priced_rows()
    del rows[2]["costs_usd"]["middle"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput):
        evaluation.tier_policy(rows, np.zeros(len(rows)), tier_models=["small", "middle", "large"])
