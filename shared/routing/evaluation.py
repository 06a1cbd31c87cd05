"""Score a router offline on labelled outcomes of a strong and a weak model; pure numpy.

The definitions follow RouteLLM (`routellm/evals`) so the numbers compare with the papers:

- A router gives each prompt a score (how much it wants the strong model). The curve is evaluated at
  CURVE_POINTS + 1 quantile thresholds of those scores (0 %, 10 %, ... 100 % of the prompts strong, up to
  ties): a prompt goes strong when its score is >= the threshold (> for the top one, so nothing is strong).
- quality(p) is the mean score of the chosen model; PGR(p) = (quality(p) - weak) / (strong - weak), where
  weak and strong are the qualities of always using that model.
- APGR is the area under PGR over the share of strong calls (trapezoids, divided by the share range, which
  is 1 without ties), so random routing scores about 0.5.
- CPT(x) is the smallest share of strong calls at which PGR reaches x, interpolating linearly along the
  curve (RouteLLM interpolates quality -> share, the same on a monotone curve).

Metrics are reported per benchmark and pooled over the benchmarks whose metric is 0/1.

Beyond the pair, `tier_policy` replays the routing policy itself (shared.routing.policy's thresholds for each
preference) over a catalog of several tiers, on rows that carry every tier model's score and real cost.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import InvalidInput
from shared.routing import policy

CURVE_POINTS = 10
RANDOM_SEEDS = 10
BINARY_METRIC = "correct_0_1"
POOLED = "pooled"


@dataclass(frozen=True)
class Outcomes:
    """Labelled outcomes: per prompt, the strong and weak model's scores, and optionally their costs."""

    strong: np.ndarray
    weak: np.ndarray
    strong_cost: np.ndarray | None = None
    weak_cost: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.strong)


@dataclass(frozen=True)
class Curve:
    """A quality curve: the share of strong calls, the quality and the PGR at each threshold."""

    share: np.ndarray
    quality: np.ndarray
    pgr: np.ndarray


@dataclass(frozen=True)
class Report:
    """A router's metrics on one benchmark (or pooled), plus the quality and cost at its own threshold."""

    n: int
    apgr: float
    cpt50: float
    cpt80: float
    weak_quality: float
    strong_quality: float
    curve: Curve
    threshold_share: float
    threshold_quality: float
    threshold_pgr: float
    threshold_cost_usd: float | None

    def to_dict(self) -> dict[str, object]:
        """Return the report as plain JSON-ready values (cpt as fractions of calls)."""
        return {
            "n": self.n,
            "apgr": round(self.apgr, 4),
            "cpt50": round(self.cpt50, 4),
            "cpt80": round(self.cpt80, 4),
            "weak_quality": round(self.weak_quality, 4),
            "strong_quality": round(self.strong_quality, 4),
            "at_threshold": {
                "strong_share": round(self.threshold_share, 4),
                "quality": round(self.threshold_quality, 4),
                "pgr": round(self.threshold_pgr, 4),
                "cost_usd_per_prompt": None if self.threshold_cost_usd is None else round(self.threshold_cost_usd, 7),
            },
            "curve": {
                "strong_share": [round(float(value), 4) for value in self.curve.share],
                "pgr": [round(float(value), 4) for value in self.curve.pgr],
            },
        }


def quality_curve(scores: np.ndarray, outcomes: Outcomes, *, points: int = CURVE_POINTS) -> Curve:
    """Return the quality curve at `points` + 1 quantile thresholds of `scores`, sorted by share."""
    _check_lengths(scores, outcomes)
    thresholds = np.quantile(scores, np.linspace(0.0, 1.0, points + 1))
    shares = []
    qualities = []
    for i, threshold in enumerate(thresholds):
        strong = scores > threshold if i == len(thresholds) - 1 else scores >= threshold
        shares.append(strong.mean())
        qualities.append(np.where(strong, outcomes.strong, outcomes.weak).mean())
    share = np.asarray(shares)
    quality = np.asarray(qualities)
    order = np.argsort(share, kind="stable")
    share, quality = share[order], quality[order]
    return Curve(share=share, quality=quality, pgr=_pgr(quality, outcomes))


def apgr(curve: Curve) -> float:
    """Return the average performance gap recovered: the area under PGR over the share of strong calls."""
    span = float(curve.share[-1] - curve.share[0])
    if span <= 0:
        # Every threshold sends the same share: the curve is a single point.
        return float(curve.pgr.mean())
    return float(np.trapezoid(curve.pgr, curve.share) / span)


def cpt(curve: Curve, target: float) -> float:
    """Return the smallest share of strong calls at which PGR reaches `target` (1.0 if it never does)."""
    for i, pgr in enumerate(curve.pgr):
        if pgr >= target:
            if i == 0:
                return float(curve.share[0])
            before, share_before = curve.pgr[i - 1], curve.share[i - 1]
            fraction = (target - before) / (pgr - before)
            return float(share_before + fraction * (curve.share[i] - share_before))
    return 1.0


def report(scores: np.ndarray, outcomes: Outcomes, *, threshold: float, points: int = CURVE_POINTS) -> Report:
    """Return APGR, CPT(50 %), CPT(80 %) and the quality and cost at `threshold` (score >= it goes strong)."""
    curve = quality_curve(scores, outcomes, points=points)
    strong = scores >= threshold
    quality = float(np.where(strong, outcomes.strong, outcomes.weak).mean())
    cost = None
    if outcomes.strong_cost is not None and outcomes.weak_cost is not None:
        cost = float(np.where(strong, outcomes.strong_cost, outcomes.weak_cost).mean())
    return Report(
        n=len(outcomes),
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
        weak_quality=float(outcomes.weak.mean()),
        strong_quality=float(outcomes.strong.mean()),
        curve=curve,
        threshold_share=float(strong.mean()),
        threshold_quality=quality,
        threshold_pgr=float(_pgr(np.array([quality]), outcomes)[0]),
        threshold_cost_usd=cost,
    )


def calibrate_threshold(scores: np.ndarray, *, strong_share: float) -> float:
    """Return the score threshold that sends `strong_share` of these prompts strong (RouteLLM's calibration)."""
    if not 0 <= strong_share <= 1 or len(scores) == 0:
        raise InvalidInput("strong_share must be in [0, 1] and scores non-empty", details={"field": "strong_share"})
    return float(np.quantile(scores, 1.0 - strong_share))


def random_report(outcomes: Outcomes, *, seeds: int = RANDOM_SEEDS, points: int = CURVE_POINTS) -> Report:
    """Return the random router's report, its curve averaged over `seeds` draws (as RouteLLM does)."""
    reports = [
        report(np.random.default_rng(seed).random(len(outcomes)), outcomes, threshold=0.5, points=points)
        for seed in range(seeds)
    ]
    share = np.mean([item.curve.share for item in reports], axis=0)
    quality = np.mean([item.curve.quality for item in reports], axis=0)
    curve = Curve(share=share, quality=quality, pgr=_pgr(quality, outcomes))
    first = reports[0]
    return Report(
        n=first.n,
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
        weak_quality=first.weak_quality,
        strong_quality=first.strong_quality,
        curve=curve,
        threshold_share=float(np.mean([item.threshold_share for item in reports])),
        threshold_quality=float(np.mean([item.threshold_quality for item in reports])),
        threshold_pgr=float(np.mean([item.threshold_pgr for item in reports])),
        threshold_cost_usd=None
        if first.threshold_cost_usd is None
        else float(
            np.mean([item.threshold_cost_usd for item in reports])  # type: ignore[misc]
        ),
    )


def group_reports(
    rows: Sequence[dict[str, object]],
    scores: np.ndarray | None,
    *,
    threshold: float,
    strong_model: str,
    weak_model: str,
) -> dict[str, Report]:
    """Return a report per benchmark and one pooled over the 0/1 benchmarks; scores None means random."""
    benchmarks = sorted({str(row["benchmark"]) for row in rows})
    groups = {name: [i for i, row in enumerate(rows) if row["benchmark"] == name] for name in benchmarks}
    binary = [i for i, row in enumerate(rows) if row.get("metric") == BINARY_METRIC]
    if binary:
        groups[POOLED] = binary
    result = {}
    for name, members in groups.items():
        outcomes = to_outcomes([rows[i] for i in members], strong_model=strong_model, weak_model=weak_model)
        if scores is None:
            result[name] = random_report(outcomes)
        else:
            result[name] = report(scores[np.asarray(members)], outcomes, threshold=threshold)
    return result


@dataclass(frozen=True)
class TierPoint:
    """What one preference of the routing policy reaches on a catalog: traffic per tier, quality and cost."""

    preference: str
    tier_shares: tuple[float, ...]
    quality: float
    cost_usd: float


@dataclass(frozen=True)
class SingleModel:
    """What always sending every prompt to one model reaches."""

    model: str
    quality: float
    cost_usd: float


def tier_policy(
    rows: Sequence[dict[str, object]], scores: np.ndarray, *, tier_models: Sequence[str]
) -> tuple[list[TierPoint], list[SingleModel]]:
    """Replay the routing policy with one model per tier (weakest first) on rows with every model's score and cost.

    Each prompt goes to the tier that shared.routing.policy.choose_tier picks for its score at each preference; the
    quality is the mean score of the chosen models and the cost the mean of their real costs. Escalation is
    not replayed (the data has no answers to judge). Also returns each tier model used alone.
    """
    if len(scores) != len(rows) or len(rows) == 0:
        raise InvalidInput("need one score per row, and at least one", details={"field": "scores"})
    try:
        quality = np.asarray([[float(row["scores"][model]) for model in tier_models] for row in rows])  # type: ignore[index]
        cost = np.asarray([[float(row["costs_usd"][model]) for model in tier_models] for row in rows])  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise InvalidInput(
            f"every row needs a score and a cost for each tier model ({', '.join(tier_models)}): {exc}",
            details={"field": "tier_models"},
        ) from exc
    points = []
    for preference in policy.PREFERENCES:
        chosen = np.asarray(
            [
                tier_models.index(policy.choose_tier(float(score), tiers=tier_models, preference=preference))
                for score in scores
            ]
        )
        points.append(
            TierPoint(
                preference=preference,
                tier_shares=tuple(float((chosen == tier).mean()) for tier in range(len(tier_models))),
                quality=float(quality[np.arange(len(rows)), chosen].mean()),
                cost_usd=float(cost[np.arange(len(rows)), chosen].mean()),
            )
        )
    singles = [
        SingleModel(model=model, quality=float(quality[:, index].mean()), cost_usd=float(cost[:, index].mean()))
        for index, model in enumerate(tier_models)
    ]
    return points, singles


def to_outcomes(rows: Sequence[dict[str, object]], *, strong_model: str, weak_model: str) -> Outcomes:
    """Return the outcome arrays of rows in the routing-eval format (costs only if every row has them)."""
    strong = np.asarray([float(row["strong_score"]) for row in rows])  # type: ignore[arg-type]
    weak = np.asarray([float(row["weak_score"]) for row in rows])  # type: ignore[arg-type]
    costs = [row.get("costs_usd") for row in rows]
    if costs and all(isinstance(cost, dict) and strong_model in cost and weak_model in cost for cost in costs):
        return Outcomes(
            strong=strong,
            weak=weak,
            strong_cost=np.asarray([cost[strong_model] for cost in costs]),  # type: ignore[index]
            weak_cost=np.asarray([cost[weak_model] for cost in costs]),  # type: ignore[index]
        )
    return Outcomes(strong=strong, weak=weak)


def read_rows(path: Path) -> list[dict[str, object]]:
    """Read routing-eval rows from a .jsonl or .jsonl.gz file; raise InvalidInput on a malformed row."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{number}: not JSON: {exc}", details={"line": number}) from exc
            missing = [key for key in ("prompt", "benchmark", "strong_score", "weak_score") if key not in row]
            if missing:
                raise InvalidInput(f"{path}:{number}: missing {', '.join(missing)}", details={"line": number})
            rows.append(row)
    return rows


def split_rows(
    rows: Iterable[dict[str, object]], *, holdout: float, seed: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Split rows into (train, held out), stratified by benchmark; the same file and seed give the same split.

    Rows are ordered by id before shuffling, so the split does not depend on the file's line order.
    """
    by_benchmark: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_benchmark.setdefault(str(row["benchmark"]), []).append(row)
    train: list[dict[str, object]] = []
    held: list[dict[str, object]] = []
    rng = np.random.default_rng(seed)
    for name in sorted(by_benchmark):
        members = sorted(by_benchmark[name], key=lambda row: str(row.get("id", row["prompt"])))
        order = rng.permutation(len(members))
        cut = round(len(members) * holdout)
        held.extend(members[i] for i in order[:cut])
        train.extend(members[i] for i in order[cut:])
    return train, held


def _pgr(quality: np.ndarray, outcomes: Outcomes) -> np.ndarray:
    weak = float(outcomes.weak.mean())
    gap = float(outcomes.strong.mean()) - weak
    if gap == 0:
        # No gap to recover: every routing recovers "all" of it.
        return np.ones_like(quality)
    return (quality - weak) / gap


def _check_lengths(scores: np.ndarray, outcomes: Outcomes) -> None:
    if len(scores) != len(outcomes) or len(scores) == 0:
        raise InvalidInput("need one score per outcome, and at least one", details={"field": "scores"})
