"""What routing saved: the cost of the same traffic on the strongest tier, against what it really cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.routing.catalog import Catalog
from shared.routing.catalog import ModelSpec
from shared.store.models import JobStatus
from shared.store.models import RequestLog

FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass(frozen=True)
class Savings:
    """Real cost against the baseline: the same tokens priced at the strongest tier's model."""

    cost: Decimal
    baseline_cost: Decimal

    @property
    def savings(self) -> Decimal:
        return self.baseline_cost - self.cost

    @property
    def savings_pct(self) -> float:
        """Savings as a percentage of the baseline (0 without a baseline; negative when routing cost more)."""
        return round(float(self.savings * 100 / self.baseline_cost), 2) if self.baseline_cost else 0.0


def baseline_model(catalog: Catalog) -> ModelSpec:
    """Return the model every prompt would go to without routing: the one serving the strongest tier."""
    return catalog.model_for_tier(catalog.tiers[-1])


def price_at_baseline(catalog: Catalog, *, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Return what these tokens cost on the baseline model, exactly.

    Prices are linear in tokens, so pricing summed tokens equals summing per-job prices: callers sum tokens
    in SQL and price the sums once.
    """
    return baseline_model(catalog).cost(prompt_tokens, completion_tokens)


def scope(
    *, since: datetime | None = None, until: datetime | None = None, api_key_id: int | None = None
) -> list[ColumnElement[bool]]:
    """Return the conditions selecting jobs created in [since, until) and, if given, made with one key."""
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(RequestLog.created_at >= since)
    if until is not None:
        conditions.append(RequestLog.created_at < until)
    if api_key_id is not None:
        conditions.append(RequestLog.api_key_id == api_key_id)
    return conditions


def get_baseline_cost(session: Session, *, catalog: Catalog, where: list[ColumnElement[bool]]) -> Decimal:
    """Return what the finished jobs matching `where` would have cost on the baseline model."""
    prompt_tokens, completion_tokens = session.execute(
        select(
            func.coalesce(func.sum(RequestLog.prompt_tokens), 0),
            func.coalesce(func.sum(RequestLog.completion_tokens), 0),
        ).where(RequestLog.status.in_(FINISHED), *where)
    ).one()
    return price_at_baseline(catalog, prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens))
