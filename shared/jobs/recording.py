"""Recording a run's outcome: one definition of what finishing a job writes, as one statement or one transaction.

A finish writes, only while the run's claim holds (states.FINISH): the job's outcome, its attempts, the
settlement of its reservation in every scope (budget.SETTLED_VALUES, the scopes locked global first), the
budget alerts that settlement reaches (alerts.firing), and, for a batch's last job, the batch's completion.
All of it commits at once, whichever form writes it:

- on PostgreSQL, for a job outside a batch: one self-committing statement, the same parts as its CTEs (see
  shared.jobs.single_statement for why a statement that commits on its own matters under load);
- otherwise one transaction of the same parts: on SQLite, and for a batch's job, since no single statement
  can decide a batch's completion (shared.jobs.endings.complete_if_done).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import Row
from sqlalchemy import bindparam
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal_column
from sqlalchemy import null
from sqlalchemy import select
from sqlalchemy import true
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.jobs import endings
from shared.jobs import single_statement
from shared.jobs import states
from shared.jobs.views import FINISHED_ATTRIBUTES
from shared.ledger import alerts
from shared.ledger import budget
from shared.store.models import REQUEST_LOG_COLUMNS
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.session import execute_alone
from shared.store.types import to_nanos
from shared.store.types import utcnow

_JOBS = RequestLog.__table__
_J = _JOBS.c
_LEDGER = MonthlyBudget.__table__
_L = _LEDGER.c
_ATTEMPTS = RequestAttempt.__table__
_ATTEMPT_FIELDS = (
    "job_id", "seq", "model", "tier", "purpose", "outcome", "error_class", "status_code", "latency_ms", "prompt_tokens",
    "completion_tokens", "cost", "started_at", "deployment",
)  # fmt: skip


@dataclass(frozen=True)
class Record:
    """What a run's finish writes: the outcome by attribute, its attempts, and the settlement of its bound."""

    job_id: str
    run_count: int
    values: dict[str, Any]
    # Each attempt's column values, job_id and seq among them.
    attempts: list[dict[str, Any]]
    api_key_id: int | None
    period: budget.Period
    reserved: Decimal
    cost: Decimal
    # The job's id when its bill passed its bound: the settlement holds its scopes' months (budget.settle).
    hold_for: str | None
    batch_id: str | None
    # The budget alert thresholds (percentages, ascending).
    thresholds: tuple[int, ...]


def record(sessions: sessionmaker[Session], rec: Record, finished: endings.Finished) -> Row[Any] | None:
    """Write the finish, all of it or none, in the form that can (see the module), adding the alerts and
    callbacks it set off to `finished`.

    Returns the finished job's row (FINISHED_ATTRIBUTES by name); None when the claim was lost, and then
    nothing was written.
    """
    engine: Engine = sessions.kw["bind"]
    if one_statement_can(engine, rec):
        return _as_one_statement(engine, rec, finished)
    return _in_one_transaction(sessions, rec, finished)


def one_statement_can(engine: Engine, rec: Record) -> bool:
    """Whether one statement can write this finish: PostgreSQL, no batch to complete, and no budget window's
    bucket to settle (shared.ledger.windows; those scopes take the transaction)."""
    return engine.dialect.name == "postgresql" and rec.batch_id is None and not rec.period.windowed


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


# What every finish writes, whatever its outcome: its lease is over, its calls are on record with their true
# costs (no longer in flight), and its reservation is settled. Written into the statement, not bound.
_ALWAYS_ENDED = {_J.lease_expires_at: null(), _J.in_flight_cost: literal_column("0"), _J.settled: true()}


@functools.cache
def _ended(names: tuple[str, ...]) -> Any:
    """The UPDATE that records the outcome (`names`: its attributes) only while the claim holds (f_run_count)."""
    return (
        update(_JOBS)
        .where(_J.id == bindparam("f_job_id", type_=_J.id.type))
        .where(states.FINISH.allows(run_count=bindparam("f_run_count")))
        .values({col: bindparam(f"f_{name}", type_=col.type) for name in names for col in [REQUEST_LOG_COLUMNS[name]]})
        .values(_ALWAYS_ENDED)
        .returning(*_RETURNED_COLUMNS)
    )


def _params(rec: Record) -> dict[str, Any]:
    """The parameters both forms bind: the outcome (f_), the settlement (b_, as budget's) and the alerts (a_)."""
    return {
        "f_job_id": rec.job_id,
        "f_run_count": rec.run_count,
        **{f"f_{name}": value for name, value in rec.values.items()},
        "b_year": rec.period.year,
        "b_month": rec.period.month,
        "b_amount": rec.reserved,
        "b_cost": rec.cost,
        "b_hold": rec.hold_for,
        "a_year": rec.period.year,
        "a_month": rec.period.month,
        "a_cost": rec.cost,
        "a_now": utcnow(),
    }


# The transaction's alerts read the months it has just settled; the statement's read its settlement's RETURNING.
_SETTLED_MONTHS = (
    select(_L.scope, _L.total_spent, _L.monthly_limit)
    .where(_L.year == alerts.YEAR, _L.month == alerts.MONTH, _L.scope.in_(bindparam("a_scopes", expanding=True)))
    .subquery("settled")
)


@functools.cache
def _firing_in_transaction(dialect: str, thresholds: tuple[int, ...]) -> Any:
    return alerts.firing(_SETTLED_MONTHS, dialect=dialect, thresholds=thresholds)


def _in_one_transaction(sessions: sessionmaker[Session], rec: Record, finished: endings.Finished) -> Row[Any] | None:
    params = _params(rec)
    scopes = budget.scopes_of(rec.api_key_id)
    with sessions.begin() as session:
        ended = session.execute(_ended(tuple(sorted(rec.values))), params).one_or_none()
        if ended is None:
            return None
        if rec.attempts:
            session.execute(insert(_ATTEMPTS), rec.attempts)
        for scope in scopes:
            budget.settle(
                session, scope=scope, period=rec.period, reserved=rec.reserved, cost=rec.cost, hold_for=rec.hold_for
            )
        statement = _firing_in_transaction(session.get_bind().dialect.name, rec.thresholds)
        fired = session.execute(statement, {**params, "a_scopes": list(scopes)}).all()
        finished.alerts += alerts.fired(fired, period=rec.period)  # type: ignore[arg-type]
        endings.follow_up(
            session, job_id=rec.job_id, callback_url=ended.callback_url, batch_id=ended.batch_id, finished=finished
        )
    return ended


@functools.cache
def _one_statement(names: tuple[str, ...], thresholds: tuple[int, ...]) -> Any:
    """The finish as one statement: the same parts as CTEs, each gated on the outcome's UPDATE having matched.

    Its rows are the finished job's columns, once per alert fired (its scope, threshold, spent and
    monthly_limit; None when none fired).
    """
    ended = _ended(names).cte("ended")
    was_ended = exists(select(ended.c.id))
    # The attempts travel as one JSON array of records, read as rows of the attempts' own type (no column list
    # to spell out): one statement whatever their number.
    records = func.jsonb_populate_recordset(
        literal_column("NULL::request_attempts"), bindparam("f_attempts", type_=JSONB)
    )
    attempts = (
        insert(_ATTEMPTS)
        .from_select(
            [_ATTEMPTS.c[name] for name in _ATTEMPT_FIELDS],
            select(*(literal_column(f"a.{name}") for name in _ATTEMPT_FIELDS))
            .select_from(records.alias("a"))
            .where(was_ended),
        )
        .cte("attempts")
    )
    # Every scope's row is locked in the one order all paths use (global first): an UPDATE alone locks in
    # whatever order its scan finds the rows, and two finishes could deadlock. A row reaches the UPDATE only
    # through `locked`, which hands it over once it holds its lock, so the order is `locked`'s.
    locked = (
        select(_L.id).where(single_statement.THIS_MONTH, was_ended).order_by(_L.scope).with_for_update().cte("locked")
    )
    settled = (
        update(_LEDGER)
        .where(_L.id.in_(select(locked.c.id)))
        .values(budget.SETTLED_VALUES)
        .returning(_L.scope, _L.total_spent, _L.monthly_limit)
        .cte("settled")
    )
    fired = alerts.firing(settled, dialect="postgresql", thresholds=thresholds).cte("fired")
    return (
        select(
            *(literal_column(name, type_=col.type) for name, col in zip(ended.c.keys(), ended.c, strict=True)),
            fired.c.scope,
            fired.c.threshold,
            fired.c.spent,
            fired.c.monthly_limit,
        )
        .select_from(ended.outerjoin(fired, true()))
        .add_cte(attempts)
    )


def _as_one_statement(engine: Engine, rec: Record, finished: endings.Finished) -> Row[Any] | None:
    params = {
        **_params(rec),
        "f_attempts": [_as_json(attempt) for attempt in rec.attempts],
        "b_scopes": list(budget.scopes_of(rec.api_key_id)),
    }
    rows = execute_alone(engine, _one_statement(tuple(sorted(rec.values)), rec.thresholds), params)
    if not rows:
        return None
    fired = [(row.scope, row.threshold, row.spent, row.monthly_limit) for row in rows if row.threshold is not None]
    finished.alerts += alerts.fired(fired, period=rec.period)
    ended = rows[0]
    # No batch to complete: one_statement_can.
    endings.note_callback(finished, job_id=rec.job_id, callback_url=ended.callback_url)
    return ended


def _as_json(attempt: dict[str, Any]) -> dict[str, Any]:
    """An attempt as a JSON record: money as integer nano-dollars and times in ISO 8601, both exact."""
    record = {name: attempt[name] for name in _ATTEMPT_FIELDS}
    record["cost"] = to_nanos(attempt["cost"])
    record["started_at"] = attempt["started_at"].isoformat()
    return record
