"""Accepting a job as one statement that commits on its own (PostgreSQL); shared.jobs.recording finishes one so.

Every request locks its month's ledger row twice: once to reserve its bound, once to settle its cost. In a
transaction the lock is held from that UPDATE until the client sends COMMIT, and under load the client is a
busy gevent process that needs a while to get back to the connection: the row then serialises the whole
service (backends queue on it while its holder sits in ClientRead). Sent as a single statement with no
transaction open, the server commits it as it ends, so the row is locked only while the server works.

This path covers the common case. Where it cannot decide (a month with no row yet, a bound that does not fit)
it writes nothing and says so, and the caller takes the transactional path (shared.jobs.lifecycle.create),
which handles it all. Both reserve by one rule (budget.fits, budget.reserved_values) and write the same row
(lifecycle.job_values).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import String
from sqlalchemy import and_
from sqlalchemy import any_
from sqlalchemy import bindparam
from sqlalchemy import case
from sqlalchemy import cast
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.expression import ColumnElement

from shared.ledger import budget
from shared.store.models import REQUEST_LOG_COLUMNS
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.session import execute_alone
from shared.store.types import Money

_LEDGER = MonthlyBudget.__table__
_JOBS = RequestLog.__table__
_ATTEMPTS = RequestAttempt.__table__
_L = _LEDGER.c
_J = _JOBS.c

_AMOUNT = bindparam("b_amount", type_=Money())
_SCOPE_COUNT = bindparam("b_scope_count")
# This month's rows of every scope a request is charged to (b_scopes); the finish locks them too.
THIS_MONTH = and_(
    _L.year == bindparam("b_year"),
    _L.month == bindparam("b_month"),
    _L.scope == any_(bindparam("b_scopes", type_=ARRAY(String))),
)
# The limit in force for each scope: the global one, or the key's own (the global one when it has none).
_LIMIT = case(
    (_L.scope == budget.GLOBAL_SCOPE, bindparam("b_global_limit", type_=Money())),
    else_=bindparam("b_key_limit", type_=Money()),
)


def _count(cte: Any, *where: ColumnElement[bool]) -> ColumnElement[Any]:
    return select(func.count()).select_from(cte).where(*where).scalar_subquery()


# Lock every scope's row in one order (global first, as the transactional path does), check that the bound
# fits under each one's limit in a month that is not held (budget.reserve), reserve it in all of them or none,
# and write the job only if all reserved.
# FOR UPDATE returns each row as it is once locked, so `fits` is judged on the latest committed amounts.
_LOCKED = (
    select(_L.scope, budget.fits(_AMOUNT, _LIMIT).label("fits"))
    .where(THIS_MONTH)
    .order_by(_L.scope)
    .with_for_update()
    .cte("locked")
)
_RESERVED = (
    update(_LEDGER)
    .where(THIS_MONTH, _count(_LOCKED, _LOCKED.c.fits) == _SCOPE_COUNT)
    .values(budget.reserved_values(_AMOUNT, _LIMIT, literal(1)))
    .returning(_L.scope)
    .cte("reserved")
)


@functools.cache
def _accept_statement(names: tuple[str, ...]) -> Any:
    """INSERT the job's row from bound values, only once every scope has reserved its bound.

    The columns not named take their scalar defaults, written into the statement (an INSERT from a SELECT
    gets no Python-side defaults filled in).
    """
    columns = [REQUEST_LOG_COLUMNS[name] for name in names]
    values = [cast(bindparam(f"j_{name}", type_=col.type), col.type) for name, col in zip(names, columns, strict=True)]
    for col in REQUEST_LOG_COLUMNS.values():
        if col not in columns and col.default is not None:
            assert col.default.is_scalar, f"{col.name} has a computed default"
            columns.append(col)
            values.append(cast(literal(col.default.arg, type_=col.type), col.type))
    rows = select(*values).where(_count(_RESERVED) == _SCOPE_COUNT)
    return insert(_JOBS).from_select(columns, rows, include_defaults=False).returning(_J.id)


def accept(
    engine: Engine,
    *,
    job: dict[str, Any],
    period: budget.Period,
    limits: Sequence[budget.ScopeLimits],
) -> bool:
    """Write the queued job (`job`: attributes as jobs.job_values gives them) and reserve its bound in every
    scope of `limits` (global first; their monthly limits: scopes with budget windows take the transactional
    path), committed; False when nothing was written.

    False means the month has no row yet in some scope or the bound does not fit in one: the caller then
    runs the transactional path, which creates months, downgrades and explains refusals.
    """
    statement = _accept_statement(tuple(job))
    limit_of = {limit.scope: limit.monthly for limit in limits}
    key_limits = [limit.monthly for limit in limits if limit.scope != budget.GLOBAL_SCOPE]
    params = {
        "b_year": period.year,
        "b_month": period.month,
        "b_scopes": [limit.scope for limit in limits],
        "b_scope_count": len(limits),
        "b_amount": job["reserved_cost"],
        "b_global_limit": limit_of[budget.GLOBAL_SCOPE],
        "b_key_limit": key_limits[0] if key_limits else limit_of[budget.GLOBAL_SCOPE],
        **{f"j_{name}": value for name, value in job.items()},
    }
    return bool(execute_alone(engine, statement, params))
