"""The monthly budget ledger: reserve a job's cost bound up front, settle the true cost after.

The invariant is `total_spent + reserved <= monthly_limit` for the month's row at every moment. Reserving
is a single conditional UPDATE, so concurrent reservations can never together pass the limit; settling
moves a job's reservation into spent (the true cost never exceeds the bound, see `reservation_bound`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import literal
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.catalog import Catalog
from shared.db.models import MonthlyBudget
from shared.db.types import Money
from shared.errors import BudgetExceeded

# Chat formatting adds a few tokens per message and per reply; this covers it with room to spare.
CHAT_OVERHEAD_TOKENS = 16


@dataclass(frozen=True)
class Period:
    """A UTC calendar month."""

    year: int
    month: int

    @classmethod
    def of(cls, moment: datetime) -> Period:
        return cls(year=moment.year, month=moment.month)


@dataclass(frozen=True)
class BudgetView:
    """One month's ledger as the API shows it."""

    year: int
    month: int
    monthly_limit: Decimal
    total_spent: Decimal
    reserved: Decimal
    request_count: int

    @property
    def remaining(self) -> Decimal:
        return self.monthly_limit - self.total_spent - self.reserved

    @property
    def percentage_used(self) -> float:
        if self.monthly_limit == 0:
            return 100.0 if self.total_spent > 0 else 0.0
        return float(self.total_spent * 100 / self.monthly_limit)


def estimate_prompt_tokens_bound(prompt: str) -> int:
    """Return a count that no tokenizer's prompt token count can exceed.

    Byte-level BPE tokens each cover at least one byte, so the UTF-8 length bounds the token count.
    """
    return len(prompt.encode("utf-8")) + CHAT_OVERHEAD_TOKENS


def reservation_bound(
    *,
    catalog: Catalog,
    tiers: Sequence[str],
    prompt: str,
    max_tokens: int,
    escalation: bool,
) -> Decimal:
    """Return the most a job can cost: its dearest possible first call plus, if allowed, its escalation.

    Failed attempts (429, 5xx, timeouts) are not billed, so retries add nothing to the bound.
    """
    prompt_tokens = estimate_prompt_tokens_bound(prompt)

    def call_bound(tier: str) -> Decimal:
        return catalog.model_for_tier(tier).cost(prompt_tokens, max_tokens)

    worst = Decimal(0)
    for tier in tiers:
        above = catalog.tier_above(tier) if escalation else None
        worst = max(worst, call_bound(tier) + (call_bound(above) if above else Decimal(0)))
    return worst


def _ensure_month(session: Session, *, period: Period, limit: Decimal) -> None:
    """Create the month's row if it is missing; a concurrent creator wins quietly."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(MonthlyBudget).values(
        year=period.year,
        month=period.month,
        monthly_limit=limit,
        total_spent=Decimal(0),
        reserved=Decimal(0),
        request_count=0,
    )
    session.execute(statement.on_conflict_do_nothing(index_elements=["year", "month"]))


def _dollars(amount: Decimal) -> object:
    """Bind `amount` as nano-dollars inside column arithmetic, where SQLAlchemy would not infer Money."""
    return literal(amount, Money())


def reserve(session: Session, *, period: Period, amount: Decimal, limit: Decimal) -> None:
    """Hold `amount` in the month's ledger or raise BudgetExceeded; counts the request when it fits.

    The limit in force is written with the reservation, so a changed MONTHLY_BUDGET_LIMIT takes effect
    at the next request.
    """
    _ensure_month(session, period=period, limit=limit)
    result = session.execute(
        update(MonthlyBudget)
        .where(
            MonthlyBudget.year == period.year,
            MonthlyBudget.month == period.month,
            MonthlyBudget.total_spent + MonthlyBudget.reserved + _dollars(amount) <= _dollars(limit),
        )
        .values(
            reserved=MonthlyBudget.reserved + _dollars(amount),
            request_count=MonthlyBudget.request_count + 1,
            monthly_limit=limit,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        view = get_view(session, period=period, limit=limit)
        raise BudgetExceeded(
            "the monthly budget cannot cover this request",
            details={"required": float(amount), "remaining": float(max(view.remaining, Decimal(0)))},
        )


def settle(session: Session, *, period: Period, reserved: Decimal, cost: Decimal) -> None:
    """Turn a job's reservation into its true cost (zero for a job that spent nothing)."""
    session.execute(
        update(MonthlyBudget)
        .where(MonthlyBudget.year == period.year, MonthlyBudget.month == period.month)
        .values(
            reserved=MonthlyBudget.reserved - _dollars(reserved),
            total_spent=MonthlyBudget.total_spent + _dollars(cost),
        )
        .execution_options(synchronize_session=False)
    )


def release(session: Session, *, period: Period, reserved: Decimal) -> None:
    """Give back a reservation whose job was never accepted, and uncount the request."""
    session.execute(
        update(MonthlyBudget)
        .where(MonthlyBudget.year == period.year, MonthlyBudget.month == period.month)
        .values(reserved=MonthlyBudget.reserved - _dollars(reserved), request_count=MonthlyBudget.request_count - 1)
        .execution_options(synchronize_session=False)
    )


def get_view(session: Session, *, period: Period, limit: Decimal) -> BudgetView:
    """Return the month's ledger under the limit in force (an empty one when the month has no row yet)."""
    row = session.scalars(
        select(MonthlyBudget)
        .where(MonthlyBudget.year == period.year, MonthlyBudget.month == period.month)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        return BudgetView(period.year, period.month, limit, Decimal(0), Decimal(0), 0)
    return BudgetView(
        year=row.year,
        month=row.month,
        monthly_limit=limit,
        total_spent=row.total_spent,
        reserved=row.reserved,
        request_count=row.request_count,
    )
