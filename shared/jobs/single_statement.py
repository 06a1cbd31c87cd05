"""Accepting and finishing a job, each as one statement that commits on its own (PostgreSQL).

Every request locks its month's ledger row twice: once to reserve its bound, once to settle its cost. In a
transaction the lock is held from that UPDATE until the client sends COMMIT, and under load the client is a
busy gevent process that needs a while to get back to the connection: the row then serialises the whole
service (backends queue on it while its holder sits in ClientRead). Sent as a single statement with no
transaction open, the server commits it as it ends, so the row is locked only while the server works.

These paths cover the common case. Where they cannot decide (a month with no row yet, a bound that does not
fit) they write nothing and say so, and the caller takes the transactional path, which handles it all (as it
does batch jobs, which never come here).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import Row
from sqlalchemy import String
from sqlalchemy import and_
from sqlalchemy import any_
from sqlalchemy import bindparam
from sqlalchemy import case
from sqlalchemy import cast
from sqlalchemy import column
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal
from sqlalchemy import literal_column
from sqlalchemy import select
from sqlalchemy import true
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.expression import ColumnElement

from shared.jobs.views import BODY_ATTRIBUTES
from shared.ledger import budget
from shared.store.models import REQUEST_LOG_COLUMNS
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.session import execute_alone
from shared.store.types import Money
from shared.store.types import to_nanos

_LEDGER = MonthlyBudget.__table__
_JOBS = RequestLog.__table__
_ATTEMPTS = RequestAttempt.__table__
_L = _LEDGER.c
_J = _JOBS.c

_AMOUNT = bindparam("b_amount", type_=Money())
_SCOPE_COUNT = bindparam("b_scope_count")
_THIS_MONTH = and_(
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
    select(_L.scope, ((_L.total_spent + _L.reserved + _AMOUNT <= _LIMIT) & _L.held_by_job.is_(None)).label("fits"))
    .where(_THIS_MONTH)
    .order_by(_L.scope)
    .with_for_update()
    .cte("locked")
)
_RESERVED = (
    update(_LEDGER)
    .where(_THIS_MONTH, _count(_LOCKED, _LOCKED.c.fits) == _SCOPE_COUNT)
    .values(reserved=_L.reserved + _AMOUNT, request_count=_L.request_count + 1, monthly_limit=_LIMIT)
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
    limits: Sequence[tuple[str, Decimal]],
) -> bool:
    """Write the queued job (`job`: attributes as jobs.job_values gives them) and reserve its bound in every
    scope of `limits` ((scope, limit), global first), committed; False when nothing was written.

    False means the month has no row yet in some scope or the bound does not fit in one: the caller then
    runs the transactional path, which creates months, downgrades and explains refusals.
    """
    statement = _accept_statement(tuple(job))
    limit_of = dict(limits)
    key_limits = [limit for scope, limit in limits if scope != budget.GLOBAL_SCOPE]
    params = {
        "b_year": period.year,
        "b_month": period.month,
        "b_scopes": [scope for scope, _ in limits],
        "b_scope_count": len(limits),
        "b_amount": job["reserved_cost"],
        "b_global_limit": limit_of[budget.GLOBAL_SCOPE],
        "b_key_limit": key_limits[0] if key_limits else limit_of[budget.GLOBAL_SCOPE],
        **{f"j_{name}": value for name, value in job.items()},
    }
    return bool(execute_alone(engine, statement, params))


# The finish: record the outcome only while the claim holds, its attempts, and the settlement of every
# scope, the last two only if the first matched. The rows returned are the finished job (every column under
# its attribute's name, as runs.py reads it) joined with each scope's spend and limit after settling.
_ATTEMPT_FIELDS = (
    ("seq", _ATTEMPTS.c.seq), ("model", _ATTEMPTS.c.model), ("tier", _ATTEMPTS.c.tier),
    ("purpose", _ATTEMPTS.c.purpose), ("outcome", _ATTEMPTS.c.outcome), ("error_class", _ATTEMPTS.c.error_class),
    ("status_code", _ATTEMPTS.c.status_code), ("latency_ms", _ATTEMPTS.c.latency_ms),
    ("prompt_tokens", _ATTEMPTS.c.prompt_tokens), ("completion_tokens", _ATTEMPTS.c.completion_tokens),
    ("cost", _ATTEMPTS.c.cost), ("started_at", _ATTEMPTS.c.started_at), ("deployment", _ATTEMPTS.c.deployment),
)  # fmt: skip


# What a finished job's row must carry, on this path and the transactional one: the body's attributes (the
# batch among them) and the callback to note.
FINISHED_ATTRIBUTES = (*BODY_ATTRIBUTES, "callback_url")
# Only these, and unqualified: psycopg caches the parsing of a statement only up to 4 KB
# (MAX_CACHED_STATEMENT_LENGTH in psycopg._queries), and with "request_logs.x AS x" for every column the finish
# came to 5.7 KB, parsed anew on every run (5 % of a worker's CPU). Labelled only where the attribute's name is
# not the column's.
_RETURNED_COLUMNS = tuple(
    literal_column(col.name, type_=col.type)
    if name == col.name
    else literal_column(col.name, type_=col.type).label(name)
    for name in FINISHED_ATTRIBUTES
    for col in [REQUEST_LOG_COLUMNS[name]]
)


@functools.cache
def _finish_statement(names: tuple[str, ...]) -> Any:
    job_id = bindparam("f_job_id", type_=_J.id.type)
    ended = (
        update(_JOBS)
        .where(_J.id == job_id, _J.status == JobStatus.RUNNING, _J.run_count == bindparam("f_run_count"))
        .values({col: bindparam(f"f_{name}", type_=col.type) for name in names for col in [REQUEST_LOG_COLUMNS[name]]})
        .returning(*_RETURNED_COLUMNS)
        .cte("ended")
    )
    was_ended = exists(select(ended.c.id))
    # The attempts travel as one JSON array of records: one statement whatever their number.
    records = (
        func.jsonb_to_recordset(bindparam("f_attempts", type_=JSONB))
        .table_valued(*(column(name, col.type) for name, col in _ATTEMPT_FIELDS))
        .render_derived(name="attempt", with_types=True)
    )
    attempts = (
        insert(_ATTEMPTS)
        .from_select(
            [_ATTEMPTS.c.job_id, *(col for _, col in _ATTEMPT_FIELDS)],
            select(job_id, *(records.c[name] for name, _ in _ATTEMPT_FIELDS)).where(was_ended),
        )
        .cte("attempts")
    )
    # Every scope's row is locked in the one order all paths use (global first): an UPDATE alone locks in
    # whatever order its scan finds the rows, and two finishes could deadlock. A row reaches the UPDATE only
    # through `locked`, which hands it over once it holds its lock, so the order is `locked`'s.
    locked = select(_L.id).where(_THIS_MONTH, was_ended).order_by(_L.scope).with_for_update().cte("locked")
    settled = (
        update(_LEDGER)
        .where(_L.id.in_(select(locked.c.id)))
        .values(budget.SETTLED_VALUES)
        .returning(_L.scope, _L.total_spent, _L.monthly_limit)
        .cte("settled")
    )
    return (
        select(
            *(literal_column(name, type_=col.type) for name, col in zip(ended.c.keys(), ended.c, strict=True)),
            settled.c.scope,
            settled.c.total_spent,
            settled.c.monthly_limit,
        )
        .select_from(ended.outerjoin(settled, true()))
        .add_cte(attempts)
    )


def finish(
    engine: Engine,
    *,
    job_id: str,
    run_count: int,
    values: dict[str, Any],
    attempts: Sequence[dict[str, Any]],
    scopes: Sequence[str],
    period: budget.Period,
    reserved: Decimal,
    cost: Decimal,
    hold_for: str | None = None,
) -> list[Row[Any]]:
    """Record the job's outcome (`values` by attribute) and `attempts`, and settle `reserved` at `cost` in
    every scope, committed, only while the job is running under `run_count` (`hold_for`: as budget.settle).

    Returns one row per scope: the finished job's columns with that scope's `scope`, `total_spent` and
    `monthly_limit` after settling; no rows when the claim was lost (nothing was written).
    """
    statement = _finish_statement(tuple(sorted(values)))
    params = {
        "f_job_id": job_id,
        "f_run_count": run_count,
        "f_attempts": [_as_json(attempt) for attempt in attempts],
        "b_year": period.year,
        "b_month": period.month,
        "b_scopes": list(scopes),
        "b_amount": reserved,
        "b_cost": cost,
        "b_hold": hold_for,
        **{f"f_{name}": value for name, value in values.items()},
    }
    return execute_alone(engine, statement, params)


def _as_json(attempt: dict[str, Any]) -> dict[str, Any]:
    """An attempt as a JSON record: money as integer nano-dollars and times in ISO 8601, both exact."""
    record = {name: attempt[name] for name, _ in _ATTEMPT_FIELDS}
    record["cost"] = to_nanos(attempt["cost"])
    record["started_at"] = attempt["started_at"].isoformat()
    return record
