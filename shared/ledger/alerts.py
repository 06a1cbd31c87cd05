"""Budget alerts: thresholds of a scope's monthly budget that fire once per scope and month, and jobs billed
over their bound, which hold their scopes' months (shared.ledger.budget)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import LABEL_STYLE_NONE
from sqlalchemy import BigInteger
from sqlalchemy import Integer
from sqlalchemy import bindparam
from sqlalchemy import case
from sqlalchemy import column
from sqlalchemy import literal_column
from sqlalchemy import select
from sqlalchemy import true
from sqlalchemy import type_coerce
from sqlalchemy import union_all
from sqlalchemy import values

from shared.ledger import budget
from shared.ledger.call_bound import Overrun
from shared.store.insert_or_ignore import upsert_capable_insert
from shared.store.models import BudgetAlert
from shared.store.types import Money
from shared.store.types import UTCDateTime

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


# What firing compares with, bound when the statement runs: the settled month and what the settlement spent.
YEAR = bindparam("a_year", type_=Integer)
MONTH = bindparam("a_month", type_=Integer)
COST = bindparam("a_cost", type_=Money())
NOW = bindparam("a_now", type_=UTCDateTime())
_ALERTS = BudgetAlert.__table__


def firing(source: Any, *, dialect: str, thresholds: Sequence[int]) -> Any:
    """Return the INSERT of the thresholds (ascending percentages) that `source`'s months newly reached, each
    once per scope and month, RETURNING scope, threshold, spent and monthly_limit.

    `source` holds the settled rows (scope, total_spent, monthly_limit) of the month YEAR/MONTH: a select of
    the ledger in the settling transaction, or the settlement's own RETURNING in the single-statement finish.
    Only a settlement that spent (COST > 0) fires; a threshold is reached once spent is at least that share of
    the limit (every one up to 100 % when the limit is zero). One rule for both finishes: this function.
    Each (scope, month, threshold) can be inserted only once, so concurrent settlements fire it once.
    """
    levels = _levels(dialect, thresholds)
    # Money is stored as integer nano-dollars: compared as such, exactly, and without rescaling the constants
    # (written into the statement, which the single-statement finish keeps short).
    spent = type_coerce(source.c.total_spent, BigInteger)
    limit = type_coerce(source.c.monthly_limit, BigInteger)
    level = levels.c.threshold
    zero, hundred = literal_column("0"), literal_column("100")
    reached = case((limit > zero, spent * hundred >= level * limit), else_=level <= hundred)
    rows = (
        select(source.c.scope, YEAR, MONTH, level, source.c.total_spent, source.c.monthly_limit, NOW)
        # A settlement that spent leaves a spend above zero: none is reached before any spend.
        .where(zero < COST, reached)
        .set_label_style(LABEL_STYLE_NONE)
    )
    columns = ("scope", "year", "month", "threshold", "spent", "monthly_limit", "fired_at")
    return (
        upsert_capable_insert(_ALERTS, dialect=dialect)
        .from_select(columns, rows.select_from(source).join(levels, true()))
        # Its one unique constraint, (scope, year, month, threshold), left unnamed to keep the statement short.
        .on_conflict_do_nothing()
        .returning(_ALERTS.c.scope, _ALERTS.c.threshold, _ALERTS.c.spent, _ALERTS.c.monthly_limit)
    )


def _levels(dialect: str, thresholds: Sequence[int]) -> Any:
    """The thresholds as a table of one column, `threshold`, written into the statement.

    No thresholds: one NULL level, which no comparison reaches (a list of rows cannot be empty). PostgreSQL
    takes the short VALUES form, which keeps the single-statement finish short; SQLite cannot name a VALUES
    list's columns, and takes a UNION.
    """
    rows = [(threshold,) for threshold in thresholds] or [(None,)]
    if dialect == "postgresql":
        return values(column("threshold", Integer), name="levels", literal_binds=True).data(rows)
    selects = [
        select(literal_column("NULL" if level is None else str(int(level))).label("threshold")) for (level,) in rows
    ]
    return union_all(*selects).subquery("levels")


def fired(rows: Iterable[tuple[str, int, Decimal, Decimal]], *, period: budget.Period) -> list[Alert]:
    """Return the alerts fired, from (scope, threshold, spent, monthly_limit), in threshold order per scope."""
    return [
        Alert(scope, period.year, period.month, threshold, spent, limit)
        for scope, threshold, spent, limit in sorted(rows)
    ]


def log(alert: Announcement) -> None:
    """Write the alert as one structured log line."""
    logger.warning("budget_alert %s", json.dumps(alert.as_payload(), sort_keys=True))
