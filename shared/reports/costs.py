"""Cost reports over a period: totals, savings, and the cost per day, model, tier and API key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import ColumnElement
from sqlalchemy import case
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.reports import savings
from shared.routing.catalog import Catalog
from shared.store.models import ApiKey
from shared.store.models import RequestLog
from shared.store.types import Money

Period = Literal["week", "month"]
PERIODS: tuple[Period, ...] = ("week", "month")
WEEK_DAYS = 7


@dataclass(frozen=True)
class Window:
    """A period as UTC days: jobs created in [since, until) belong to it."""

    days: tuple[date, ...]

    @property
    def since(self) -> datetime:
        return datetime.combine(self.days[0], time(), tzinfo=UTC)

    @property
    def until(self) -> datetime:
        return datetime.combine(self.days[-1] + timedelta(days=1), time(), tzinfo=UTC)


@dataclass(frozen=True)
class DayCost:
    day: date
    cost: Decimal
    baseline_cost: Decimal
    requests: int


@dataclass(frozen=True)
class ModelCost:
    model: str | None
    cost: Decimal
    # Part of cost charged at worst-case bounds for calls whose answer was lost (shared.ledger.lost_calls).
    unconfirmed_cost: Decimal
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TierCost:
    tier: str | None
    cost: Decimal
    requests: int


@dataclass(frozen=True)
class KeyCost:
    """Jobs made without a key have neither an id nor a name."""

    api_key_id: int | None
    name: str | None
    cost: Decimal
    requests: int


@dataclass(frozen=True)
class CostReport:
    """Every job created in the window; each breakdown sums to the totals."""

    period: Period
    window: Window
    totals: savings.Savings
    requests: int
    by_day: list[DayCost]
    by_model: list[ModelCost]
    by_tier: list[TierCost]
    by_key: list[KeyCost]

    @property
    def unconfirmed_cost(self) -> Decimal:
        return sum((row.unconfirmed_cost for row in self.by_model), Decimal(0))


def window_for(period: Period, *, today: date) -> Window:
    """Return the period's days: the last 7 including today, or the whole current calendar month."""
    if period == "week":
        return Window(days=tuple(today - timedelta(days=back) for back in reversed(range(WEEK_DAYS))))
    if period == "month":
        first = today.replace(day=1)
        next_month = (first + timedelta(days=32)).replace(day=1)
        return Window(days=tuple(first + timedelta(days=n) for n in range((next_month - first).days)))
    raise InvalidInput(f"period must be one of {', '.join(PERIODS)}", details={"field": "period"})


def get(
    session: Session, *, catalog: Catalog, period: Period, today: date, api_key_id: int | None = None
) -> CostReport:
    """Report the costs of the jobs created in the period (only one key's jobs when `api_key_id` is given)."""
    window = window_for(period, today=today)
    where = savings.scope(since=window.since, until=window.until, api_key_id=api_key_id)
    by_day = _by_day(session, catalog=catalog, window=window, where=where)
    total_cost = sum((day.cost for day in by_day), Decimal(0))
    return CostReport(
        period=period,
        window=window,
        totals=savings.Savings(cost=total_cost, baseline_cost=sum((d.baseline_cost for d in by_day), Decimal(0))),
        requests=sum(day.requests for day in by_day),
        by_day=by_day,
        by_model=_by_model(session, where=where),
        by_tier=_by_tier(session, where=where),
        by_key=_by_key(session, where=where),
    )


def _cost() -> ColumnElement[Decimal]:
    return func.sum(RequestLog.cost, type_=Money())


def _by_day(session: Session, *, catalog: Catalog, window: Window, where: list[ColumnElement[bool]]) -> list[DayCost]:
    # The day of each job is found by comparing created_at with the window's UTC midnights, which reads the
    # same on every backend (SQLite has no time zones; PostgreSQL's date() would use the session's zone).
    midnights = [datetime.combine(day, time(), tzinfo=UTC) for day in window.days[1:]]
    day_index = case(
        *((RequestLog.created_at < midnight, index) for index, midnight in enumerate(midnights)),
        else_=len(midnights),
    )
    finished = RequestLog.status.in_(savings.FINISHED)
    rows = session.execute(
        select(
            day_index,
            _cost(),
            func.count(RequestLog.id),
            func.sum(case((finished, RequestLog.prompt_tokens), else_=0)),
            func.sum(case((finished, RequestLog.completion_tokens), else_=0)),
        )
        .where(*where)
        .group_by(day_index)
    ).all()
    found = {int(index): (cost, requests, prompt, completion) for index, cost, requests, prompt, completion in rows}
    days = []
    for index, day in enumerate(window.days):
        cost, requests, prompt_tokens, completion_tokens = found.get(index, (Decimal(0), 0, 0, 0))
        baseline = savings.price_at_baseline(
            catalog, prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens)
        )
        days.append(DayCost(day=day, cost=Decimal(cost), baseline_cost=baseline, requests=int(requests)))
    return days


def _by_model(session: Session, *, where: list[ColumnElement[bool]]) -> list[ModelCost]:
    rows = session.execute(
        select(
            RequestLog.model_used,
            _cost(),
            func.count(RequestLog.id),
            func.sum(RequestLog.prompt_tokens),
            func.sum(RequestLog.completion_tokens),
            func.sum(RequestLog.unconfirmed_cost, type_=Money()),
        )
        .where(*where)
        .group_by(RequestLog.model_used)
    ).all()
    result = [
        ModelCost(
            model=model,
            cost=Decimal(cost),
            unconfirmed_cost=Decimal(unconfirmed),
            requests=requests,
            prompt_tokens=int(p),
            completion_tokens=int(c),
        )
        for model, cost, requests, p, c, unconfirmed in rows
    ]
    return sorted(result, key=lambda row: (-row.cost, row.model or ""))


def _by_tier(session: Session, *, where: list[ColumnElement[bool]]) -> list[TierCost]:
    rows = session.execute(
        select(RequestLog.tier, _cost(), func.count(RequestLog.id)).where(*where).group_by(RequestLog.tier)
    ).all()
    result = [TierCost(tier=tier, cost=Decimal(cost), requests=requests) for tier, cost, requests in rows]
    return sorted(result, key=lambda row: (-row.cost, row.tier or ""))


def _by_key(session: Session, *, where: list[ColumnElement[bool]]) -> list[KeyCost]:
    rows = session.execute(
        select(RequestLog.api_key_id, ApiKey.name, _cost(), func.count(RequestLog.id))
        .outerjoin(ApiKey, ApiKey.id == RequestLog.api_key_id)
        .where(*where)
        .group_by(RequestLog.api_key_id, ApiKey.name)
    ).all()
    result = [
        KeyCost(api_key_id=key_id, name=name, cost=Decimal(cost), requests=requests)
        for key_id, name, cost, requests in rows
    ]
    return sorted(result, key=lambda row: (-row.cost, row.api_key_id or 0))
