"""Budget alerts: thresholds of a scope's monthly budget that fire once per scope and month, and jobs billed
over their bound, which hold their scopes' months (shared.ledger.budget)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.ledger import budget
from shared.ledger.call_bound import Overrun
from shared.store.insert_or_ignore import insert_or_ignore
from shared.store.models import BudgetAlert
from shared.store.models import MonthlyBudget
from shared.store.types import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """A threshold crossed: `spent` reached `threshold` percent of `monthly_limit` in `scope`."""

    scope: str
    year: int
    month: int
    threshold: int
    spent: Decimal
    monthly_limit: Decimal

    def as_payload(self) -> dict[str, object]:
        """Return the alert as the JSON body of a webhook and a log line."""
        body = asdict(self)
        body.update(event="budget_threshold", spent=str(self.spent), monthly_limit=str(self.monthly_limit))
        return body


@dataclass(frozen=True)
class UsageOverBound:
    """The upstream billed job `job_id` more than its bound: its cost is recorded as billed, and `scopes`
    reserve nothing more in the month until an operator clears the hold."""

    job_id: str
    scopes: tuple[str, ...]
    year: int
    month: int
    cost: Decimal
    reserved: Decimal
    # Each attempt billed over the bound: model, prompt_tokens, completion_tokens.
    attempts: tuple[dict[str, object], ...]

    @classmethod
    def of(cls, overrun: Overrun, *, job_id: str, scopes: Sequence[str], period: budget.Period) -> UsageOverBound:
        return cls(
            job_id, tuple(scopes), period.year, period.month, overrun.cost, overrun.reserved, tuple(overrun.billed())
        )

    def as_payload(self) -> dict[str, object]:
        """Return the alert as the JSON body of a webhook and a log line."""
        body = asdict(self)
        body.update(
            event="usage_over_bound",
            scopes=list(self.scopes),
            attempts=list(self.attempts),
            cost=str(self.cost),
            reserved=str(self.reserved),
        )
        return body


@dataclass(frozen=True)
class UsageInvalid:
    """The upstream reported usage that cannot be true for calls of job `job_id` (shared.upstream.answer_schema):
    each is charged at its bound instead. An upstream that does this may bill anything; operators should know."""

    job_id: str
    # The model of each such call.
    models: tuple[str, ...]
    # What those calls were charged, at their bounds.
    charged: Decimal

    def as_payload(self) -> dict[str, object]:
        """Return the alert as the JSON body of a webhook and a log line."""
        return {"event": "usage_invalid", "job_id": self.job_id, "models": list(self.models),
                "charged": str(self.charged)}  # fmt: skip


# What a finished job may set off for operators, delivered alike (a log line, ALERT_WEBHOOK_URL).
Announcement = Alert | UsageOverBound | UsageInvalid


def check(session: Session, *, scope: str, period: budget.Period, thresholds: Sequence[int]) -> list[Alert]:
    """Record and return the thresholds the scope's spend has newly reached this month.

    Each (scope, month, threshold) can be inserted only once, so concurrent settlements fire it once.
    """
    row = session.scalars(
        select(MonthlyBudget)
        .where(MonthlyBudget.scope == scope, MonthlyBudget.year == period.year, MonthlyBudget.month == period.month)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        return []
    return fire(session, scope=scope, period=period, spent=row.total_spent, limit=row.monthly_limit,
                thresholds=thresholds)  # fmt: skip


def fire(
    session: Session, *, scope: str, period: budget.Period, spent: Decimal, limit: Decimal, thresholds: Sequence[int]
) -> list[Alert]:
    """check() for a caller that already holds the month's spend and limit (a settlement's RETURNING)."""
    fired = []
    for threshold in reached(spent=spent, limit=limit, thresholds=thresholds):
        values = {
            "scope": scope, "year": period.year, "month": period.month, "threshold": threshold, "spent": spent,
            "monthly_limit": limit, "fired_at": utcnow(),
        }  # fmt: skip
        if insert_or_ignore(session, BudgetAlert, values, conflict_on=("scope", "year", "month", "threshold")):
            fired.append(Alert(scope, period.year, period.month, threshold, spent, limit))
    return fired


def reached(*, spent: Decimal, limit: Decimal, thresholds: Sequence[int]) -> list[int]:
    """Return the thresholds (ascending percentages) that a month's spend has reached; none before any spend."""
    if spent <= 0:
        return []
    used = spent * 100 / limit if limit > 0 else Decimal(100)
    return [threshold for threshold in thresholds if used >= threshold]


def log(alert: Announcement) -> None:
    """Write the alert as one structured log line."""
    logger.warning("budget_alert %s", json.dumps(alert.as_payload(), sort_keys=True))
