"""Budget windows: spending limits over a UTC day, an ISO week or a rolling span of hours, beside a scope's month.

A scope (the service, or one API key) may have any number of windows, each with its limit in dollars:
`{"day": "5", "week": "20", "6h": "2"}`. A job accepted while one of its scopes has windows puts its reservation
in that scope's bucket of the hour it was accepted in (BudgetBucket), and its settlement moves it to spent
there, as the monthly ledger does. A window's spending is spent + reserved summed over the buckets it covers;
a reservation goes through only if, for every window of the scope, that sum plus the job's bound stays within
the window's limit.

What a window covers, in whole UTC hours:
- "day": since 00:00 UTC today; "week": since Monday 00:00 UTC;
- "<N>h" or "<N>d" (rolling; N days are N x 24 hours): the bucket of the current hour and the N before it. A
  dollar leaves the window between N and N+1 hours after its job was accepted, never sooner, so no stretch
  of N hours ever spends more than the limit.

The check reads buckets and then adds to one, so two reservations of a scope must not interleave. Each
reservation first takes its scope's monthly row with a conditional UPDATE (shared.ledger.budget.reserve),
which holds that row's lock until the commit on PostgreSQL (SQLite has one writer at a time): the scope's
reservations are serialised by it, and under READ COMMITTED the check, a later statement, sees every
reservation committed before it. Settling only lowers a window's sum, save for a job billed over its bound,
which holds the scope's month and so stops its reservations anyway.

When a scope gets windows, its buckets are rebuilt from its jobs of the longest window's span (count_history):
a key's when an admin first gives it windows, the service's when a web process starts with windows and finds no
bucket of its own in that span. From then on every job of the scope keeps them current. A job that was in
flight then, and so not in a bucket, counts at its whole reservation until it leaves the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal_column
from sqlalchemy import select
from sqlalchemy import type_coerce
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.ledger.window_spans import MAX_HOURS
from shared.ledger.window_spans import Window
from shared.ledger.window_spans import hour_of
from shared.store.insert_or_ignore import upsert_capable_insert
from shared.store.models import BudgetBucket
from shared.store.models import RequestLog
from shared.store.types import Money

_BUCKETS = BudgetBucket.__table__
_B = _BUCKETS.c


@dataclass(frozen=True)
class WindowView:
    """One window of a scope as the API shows it."""

    window: str
    since: datetime
    limit: Decimal
    spent: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.spent - self.reserved


def views(session: Session, *, scope: str, now: datetime, windows: Mapping[str, Decimal]) -> list[WindowView]:
    """Return what each of the scope's windows has spent and holds at `now`."""
    if not windows:
        return []
    starts = {name: Window(name).since(now) for name in windows}
    sums = [
        (type_coerce(func.coalesce(func.sum(case((_B.hour >= start, column), else_=0)), 0), Money()))
        for start in starts.values()
        for column in (_B.spent, _B.reserved)
    ]
    row = session.execute(select(*sums).where(_B.scope == scope, _B.hour >= min(starts.values()))).one()
    return [
        WindowView(window=name, since=start, limit=windows[name], spent=row[2 * i], reserved=row[2 * i + 1])
        for i, (name, start) in enumerate(starts.items())
    ]


def overflow(
    session: Session, *, scope: str, now: datetime, amount: Decimal, windows: Mapping[str, Decimal]
) -> WindowView | None:
    """Return the first of the scope's windows that cannot hold `amount` more at `now` (None: all can).

    Call it after the scope's monthly reservation in the same transaction (see the module on why).
    """
    for view in views(session, scope=scope, now=now, windows=windows):
        if view.spent + view.reserved + amount > view.limit:
            return view
    return None


def hold(session: Session, *, scope: str, hour: datetime, amount: Decimal) -> None:
    """Add `amount` to what the scope's bucket of `hour` holds, creating the bucket if it is the hour's first."""
    statement = upsert_capable_insert(_BUCKETS, dialect=session.get_bind().dialect.name).values(
        scope=scope, hour=hour, spent=Decimal(0), reserved=amount
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["scope", "hour"], set_={"reserved": _B.reserved + statement.excluded.reserved}
        )
    )


def settle(session: Session, *, scope: str, hour: datetime, reserved: Decimal, cost: Decimal) -> None:
    """Turn a job's reservation in the bucket into its cost (zero for a job that spent nothing)."""
    session.execute(
        update(_BUCKETS)
        .where(_B.scope == scope, _B.hour == hour)
        .values(reserved=_B.reserved - reserved, spent=_B.spent + cost)
    )


def release(session: Session, *, scope: str, hour: datetime, reserved: Decimal) -> None:
    """Give back a reservation whose jobs were never accepted."""
    settle(session, scope=scope, hour=hour, reserved=reserved, cost=Decimal(0))


def history_start(now: datetime) -> datetime:
    """Return the first hour any window can count at `now`: the buckets kept, and rebuilt, from then on."""
    return hour_of(now) - timedelta(hours=MAX_HOURS)


def has_history(session: Session, *, scope: str, now: datetime) -> bool:
    """Whether the scope has a bucket in the span any window can count: its jobs have been kept in buckets."""
    found = select(_B.id).where(_B.scope == scope, _B.hour >= history_start(now)).limit(1)
    return session.execute(found).first() is not None


def count_history(session: Session, *, scope: str, api_key_id: int | None, now: datetime) -> None:
    """Rebuild the scope's buckets from its jobs (the key's, or every job for the service) of the span.

    Call it holding the lock of the scope's monthly row (shared.ledger.budget.count_window_history). A settled
    job counts at its cost; one in flight that its bucket holds (windowed for the scope) counts as reserved,
    which its settlement turns into its cost; one in flight outside the buckets counts at its reservation as
    spent, since no settlement will correct it.
    """
    # The delete first: on SQLite the first write takes the database's lock, before the jobs are read.
    session.execute(delete(_BUCKETS).where(_B.scope == scope))
    start = history_start(now)
    jobs = RequestLog.__table__.c
    mine = [jobs.created_at >= start] + ([] if api_key_id is None else [jobs.api_key_id == api_key_id])
    hour = _hour_of_column(jobs.created_at, dialect=session.get_bind().dialect.name)
    totals: dict[datetime, list[Decimal]] = {}
    settled = select(hour.label("hour"), type_coerce(func.sum(jobs.cost), Money()).label("cost"))
    for row in session.execute(settled.where(*mine, jobs.settled.is_(True)).group_by(hour)):
        totals.setdefault(_as_utc_hour(row.hour), [Decimal(0), Decimal(0)])[0] += row.cost
    in_flight = select(jobs.created_at, jobs.reserved_cost, jobs.windowed_scopes)
    for row in session.execute(in_flight.where(*mine, jobs.settled.is_(False))):
        held = totals.setdefault(hour_of(row.created_at), [Decimal(0), Decimal(0)])
        held[1 if scope in (row.windowed_scopes or ()) else 0] += row.reserved_cost
    if totals:
        rows = [{"scope": scope, "hour": at, "spent": spent, "reserved": reserved}
                for at, (spent, reserved) in sorted(totals.items())]  # fmt: skip
        session.execute(insert(_BUCKETS), rows)


def _hour_of_column(column: Any, *, dialect: str) -> Any:
    """The UTC hour of a timestamp column, in SQL: grouping by it keeps the work in the database."""
    if dialect == "postgresql":
        return func.date_trunc("hour", column.op("AT TIME ZONE")(literal_column("'UTC'")))
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _as_utc_hour(value: datetime | str) -> datetime:
    """Read _hour_of_column's value: a naive UTC timestamp (PostgreSQL) or its text (SQLite)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC)
