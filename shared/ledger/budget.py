"""The monthly budget ledger: reserve a job's cost bound up front, settle the true cost after.

The invariant is `total_spent + reserved <= monthly_limit` for the month's row at every moment. Reserving
is a single conditional UPDATE, so concurrent reservations can never together pass the limit; settling
moves a job's reservation into spent. The true cost stays within the bound (shared.ledger.call_bound) unless an upstream
bills more than it may: the ledger then records what was billed, and the settlement holds the scope's month
(`held_by_job`), so that it reserves nothing more until an operator clears the hold (`clear_hold`).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement

from shared.errors import BudgetExceeded
from shared.ledger import call_bound
from shared.ledger import window_spans
from shared.ledger import windows
from shared.routing.catalog import Catalog
from shared.store.insert_or_ignore import insert_or_ignore
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.types import Money
from shared.store.types import utcnow

GLOBAL_SCOPE = "global"


def key_scope(api_key_id: int) -> str:
    """Return the budget scope of one API key."""
    return f"key:{api_key_id}"


def scopes_of(api_key_id: int | None) -> tuple[str, ...]:
    """Return the scopes a job's money moves in, in the order they are always locked (global first)."""
    return (GLOBAL_SCOPE,) if api_key_id is None else (GLOBAL_SCOPE, key_scope(api_key_id))


@dataclass(frozen=True)
class Period:
    """Where a job's money sits: its scopes' rows of a UTC calendar month and, for the scopes that had budget
    windows when it was accepted (`windowed`), their buckets of the hour it was accepted in (shared.ledger.windows)."""

    year: int
    month: int
    hour: datetime | None = None
    windowed: tuple[str, ...] = ()

    @classmethod
    def of(cls, moment: datetime, *, windowed: Sequence[str] = ()) -> Period:
        hour = window_spans.hour_of(moment) if windowed else None
        return cls(year=moment.year, month=moment.month, hour=hour, windowed=tuple(windowed))

    @classmethod
    def of_job(cls, job: Any) -> Period:
        """Return the period a job row (budget_year, budget_month, created_at, windowed_scopes) was accepted in."""
        scopes = tuple(job.windowed_scopes or ())
        hour = window_spans.hour_of(job.created_at) if scopes else None
        return cls(year=job.budget_year, month=job.budget_month, hour=hour, windowed=scopes)

    def bucket(self, scope: str) -> datetime | None:
        """The hour whose bucket of `scope` holds the job's money; None when that scope has no windows for it."""
        return self.hour if scope in self.windowed else None


# What a job row must give for Period.of_job.
PERIOD_COLUMNS = (RequestLog.budget_year, RequestLog.budget_month, RequestLog.created_at, RequestLog.windowed_scopes)


@dataclass(frozen=True)
class ScopeLimits:
    """The limits a scope's spending is held to: its month's, and each of its budget windows' (may be none)."""

    scope: str
    monthly: Decimal
    windows: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetView:
    """One month's ledger as the API shows it."""

    scope: str
    year: int
    month: int
    monthly_limit: Decimal
    total_spent: Decimal
    reserved: Decimal
    request_count: int
    # The job whose bill passed its bound: while set, the scope reserves nothing this month.
    held_by_job: str | None = None

    @property
    def remaining(self) -> Decimal:
        return self.monthly_limit - self.total_spent - self.reserved

    @property
    def percentage_used(self) -> float:
        if self.monthly_limit == 0:
            return 100.0 if self.total_spent > 0 else 0.0
        return float(self.total_spent * 100 / self.monthly_limit)


def reservation_bound(
    *,
    catalog: Catalog,
    tiers: Sequence[str],
    prompt: str,
    max_tokens: int,
    escalation: bool,
    max_tier: str | None = None,
    messages: Sequence[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> Decimal:
    """Return the most a job can cost: its dearest possible answer plus, if allowed, its escalation.

    Each call is bounded by shared.ledger.call_bound from the request as it is sent (`messages` or `prompt`, `options`,
    `max_tokens`). An answer comes from the tier's model or one of its fallbacks, so each is priced at the
    dearest of that chain. Failed attempts (429, 5xx, timeouts) are not billed, so retries add nothing. With
    `max_tier`, neither the first call nor the escalation may go above that tier.
    """
    call = call_bound.call_bound(prompt=prompt, max_tokens=max_tokens, messages=messages, options=options)
    allowed = catalog.tiers_up_to(max_tier)

    def tier_bound(tier: str) -> Decimal:
        chain = catalog.chain(catalog.model_for_tier(tier).name)
        return max(call.cost(model) for model in chain if model.tier in allowed)

    worst = Decimal(0)
    for tier in tiers:
        if tier not in allowed:
            continue
        above = catalog.tier_above(tier) if escalation else None
        extra = tier_bound(above) if above in allowed else Decimal(0)
        worst = max(worst, tier_bound(tier) + extra)
    return worst


def _ensure_month(session: Session, *, scope: str, period: Period, limit: Decimal) -> None:
    """Create the scope's row for the month if it is missing; a concurrent creator wins quietly."""
    values = {
        "scope": scope, "year": period.year, "month": period.month, "monthly_limit": limit,
        "total_spent": Decimal(0), "reserved": Decimal(0), "request_count": 0,
    }  # fmt: skip
    insert_or_ignore(session, MonthlyBudget, values, conflict_on=("scope", "year", "month"))


# The ledger's hot statements are built once, as Core statements on the table with bound parameters:
# every request runs them, and neither rebuilding them nor the ORM's bulk-update path is free.
_LEDGER = MonthlyBudget.__table__.c
_SCOPE = bindparam("b_scope")
_YEAR = bindparam("b_year")
_MONTH = bindparam("b_month")
_AMOUNT = bindparam("b_amount", type_=Money())
_LIMIT = bindparam("b_limit", type_=Money())
_COST = bindparam("b_cost", type_=Money())
_COUNT = bindparam("b_count")
_HOLD = bindparam("b_hold", type_=MonthlyBudget.__table__.c.held_by_job.type)
_THIS_MONTH = (_LEDGER.scope == _SCOPE, _LEDGER.year == _YEAR, _LEDGER.month == _MONTH)

# What a settlement writes, on this path and the single-statement finish alike: the reservation becomes the
# cost, and a job billed over its bound (`b_hold`, its id; NULL for any other) holds the month, the first
# such job staying named.
SETTLED_VALUES = {
    _LEDGER.reserved: _LEDGER.reserved - _AMOUNT,
    _LEDGER.total_spent: _LEDGER.total_spent + _COST,
    _LEDGER.held_by_job: func.coalesce(_LEDGER.held_by_job, _HOLD),
}


def fits(amount: ColumnElement[Any], limit: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether a month's row can hold `amount` more under `limit`: the one rule of a reservation, on this path
    and the single-statement accept alike (and the month is not held)."""
    return (_LEDGER.total_spent + _LEDGER.reserved + amount <= limit) & _LEDGER.held_by_job.is_(None)


def reserved_values(amount: ColumnElement[Any], limit: ColumnElement[Any], count: ColumnElement[Any]) -> dict[Any, Any]:
    """What a reservation that fits writes: the amount held, `count` requests counted, the limit in force."""
    return {
        _LEDGER.reserved: _LEDGER.reserved + amount,
        _LEDGER.request_count: _LEDGER.request_count + count,
        _LEDGER.monthly_limit: limit,
    }


# Holds the amount and counts the requests only if it fits under the limit, which is written with it.
_RESERVE = (
    update(MonthlyBudget.__table__)
    .where(*_THIS_MONTH, fits(_AMOUNT, _LIMIT))
    .values(reserved_values(_AMOUNT, _LIMIT, _COUNT))
)
_SETTLE = (
    update(MonthlyBudget.__table__)
    .where(*_THIS_MONTH)
    .values(SETTLED_VALUES)
    .returning(_LEDGER.total_spent, _LEDGER.monthly_limit)
)
_RELEASE = (
    update(MonthlyBudget.__table__)
    .where(*_THIS_MONTH)
    .values(reserved=_LEDGER.reserved - _AMOUNT, request_count=_LEDGER.request_count - _COUNT)
)


def _month(scope: str, period: Period) -> dict[str, object]:
    return {"b_scope": scope, "b_year": period.year, "b_month": period.month}


def reserve(
    session: Session,
    *,
    scope: str,
    period: Period,
    amount: Decimal,
    limit: Decimal,
    count: int = 1,
    window_limits: Mapping[str, Decimal] | None = None,
    now: datetime | None = None,
) -> None:
    """Hold `amount` in the scope's ledger for the month or raise BudgetExceeded; counts `count` requests.

    The limit in force is written with the reservation, so a changed MONTHLY_BUDGET_LIMIT takes effect
    at the next request. The month's row is created only when the reservation finds none: every request
    but a month's first costs the one UPDATE. With `window_limits` the amount must also fit in each of the
    scope's budget windows at `now`, and it is held in the scope's bucket when the period has one for it.
    """
    reserved = _reserve(session, scope=scope, period=period, amount=amount, limit=limit, count=count)
    if not reserved:
        _ensure_month(session, scope=scope, period=period, limit=limit)
        reserved = _reserve(session, scope=scope, period=period, amount=amount, limit=limit, count=count)
    which = "the service's" if scope == GLOBAL_SCOPE else "this API key's"
    if not reserved:
        view = get_view(session, scope=scope, period=period, limit=limit)
        if view.held_by_job is not None:
            raise BudgetExceeded(
                f"spending from {which} monthly budget is stopped: job {view.held_by_job} was billed more than "
                "its bound; an operator must clear the hold (DELETE /api/budget/hold, or `model-router budget "
                "--clear-hold`)",
                details={"scope": scope, "reason": "usage_over_bound", "job_id": view.held_by_job},
            )
        raise BudgetExceeded(
            f"{which} monthly budget cannot cover this request",
            details={
                "scope": scope,
                "required": float(amount),
                "remaining": float(max(view.remaining, Decimal(0))),
            },
        )
    # The month's row is locked from here to the commit: the windows are read and written under that lock.
    if window_limits:
        full = windows.overflow(session, scope=scope, now=now or utcnow(), amount=amount, windows=window_limits)
        if full is not None:
            session.execute(_RELEASE, {**_month(scope, period), "b_amount": amount, "b_count": count})
            raise BudgetExceeded(
                f"{which} {full.window} budget window cannot cover this request",
                details={
                    "scope": scope,
                    "window": full.window,
                    "required": float(amount),
                    "remaining": float(max(full.remaining, Decimal(0))),
                },
            )
    hour = period.bucket(scope)
    if hour is not None:
        windows.hold(session, scope=scope, hour=hour, amount=amount)


def _reserve(session: Session, *, scope: str, period: Period, amount: Decimal, limit: Decimal, count: int) -> bool:
    """Hold `amount` with one conditional UPDATE; False when the month has no row or the amount does not fit."""
    result = session.execute(
        _RESERVE, {**_month(scope, period), "b_amount": amount, "b_limit": limit, "b_count": count}
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def settle(
    session: Session,
    *,
    scope: str,
    period: Period,
    reserved: Decimal,
    cost: Decimal,
    hold_for: str | None = None,
) -> tuple[Decimal, Decimal] | None:
    """Turn a job's reservation into its true cost (zero for a job that spent nothing); `hold_for`: the id
    of a job billed over its bound, which holds the month (see reserve).

    Returns the month's spend and limit after it, for the alerts (None if the month has no row).
    """
    params = {**_month(scope, period), "b_amount": reserved, "b_cost": cost, "b_hold": hold_for}
    row = session.execute(_SETTLE, params).one_or_none()
    hour = period.bucket(scope)
    if hour is not None:
        windows.settle(session, scope=scope, hour=hour, reserved=reserved, cost=cost)
    return None if row is None else (row.total_spent, row.monthly_limit)


def release(session: Session, *, scope: str, period: Period, reserved: Decimal, count: int = 1) -> None:
    """Give back a reservation whose jobs were never accepted, and uncount their `count` requests."""
    session.execute(_RELEASE, {**_month(scope, period), "b_amount": reserved, "b_count": count})
    hour = period.bucket(scope)
    if hour is not None:
        windows.release(session, scope=scope, hour=hour, reserved=reserved)


def count_window_history(
    session: Session, *, scope: str, api_key_id: int | None, now: datetime, unless_kept: bool = False
) -> bool:
    """Rebuild the scope's budget-window buckets from its jobs (shared.ledger.windows.count_history), holding
    the lock of its monthly row, which every reservation of the scope takes first, so that none interleaves.

    `unless_kept`: only if the scope has no bucket in the span windows count (windows.has_history). Returns
    whether it rebuilt them.
    """
    session.execute(select(_LEDGER.id).where(*_THIS_MONTH).with_for_update(), _month(scope, Period.of(now)))
    if unless_kept and windows.has_history(session, scope=scope, now=now):
        return False
    windows.count_history(session, scope=scope, api_key_id=api_key_id, now=now)
    return True


def clear_hold(session: Session, *, scope: str, period: Period) -> bool:
    """Let the scope reserve again this month; False when it was not held."""
    result = session.execute(
        update(MonthlyBudget.__table__).where(*_THIS_MONTH, _LEDGER.held_by_job.is_not(None)).values(held_by_job=None),
        _month(scope, period),
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def get_view(session: Session, *, scope: str, period: Period, limit: Decimal) -> BudgetView:
    """Return the month's ledger under the limit in force (an empty one when the month has no row yet)."""
    row = session.scalars(
        select(MonthlyBudget).where(*_THIS_MONTH).execution_options(populate_existing=True), _month(scope, period)
    ).one_or_none()
    if row is None:
        return BudgetView(scope, period.year, period.month, limit, Decimal(0), Decimal(0), 0)
    return BudgetView(
        scope=scope,
        year=row.year,
        month=row.month,
        monthly_limit=limit,
        total_spent=row.total_spent,
        reserved=row.reserved,
        request_count=row.request_count,
        held_by_job=row.held_by_job,
    )
