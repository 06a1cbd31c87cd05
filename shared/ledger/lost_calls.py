"""Upstream calls whose outcome is not on record: noted before they start, charged at their bound if lost.

A run records its calls' true costs only when it finishes. Before each call it notes the call's worst-case
cost on the job (`in_flight_cost`), under its claim; its finish clears the note. A worker that dies in
between leaves the note behind, and whoever next takes the job charges it, as `unconfirmed_cost`, never less
than the upstream may have billed:

- the next run moves it into `unconfirmed_cost` (part of the job's cost) and tops the job's reservation up by
  as much, if the budget still has it, so that the re-run may spend what the first run could have;
- the reaper, or a run that cannot record its outcome, fails the job charging it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import Row
from sqlalchemy import bindparam
from sqlalchemy import case
from sqlalchemy import func
from sqlalchemy import literal
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql.expression import ColumnElement

from shared.config import Settings
from shared.errors import BudgetExceeded
from shared.jobs import endings
from shared.jobs import lifecycle
from shared.jobs import states
from shared.ledger import budget
from shared.store.models import ApiKey
from shared.store.models import JobStatus
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.session import execute_alone
from shared.store.types import Money
from shared.upstream.attempts import UNCONFIRMED

logger = logging.getLogger(__name__)

# Stands for a lost call's model and tier when the job names neither.
UNKNOWN = "unknown"

_JOB = RequestLog.__table__.c
# Only while the claim holds: a run that lost its job must not spend on it any more.
_NOTE = (
    update(RequestLog.__table__)
    .where(_JOB.id == bindparam("b_job_id"), states.held(run_count=bindparam("b_run")))
    .values(in_flight_cost=_JOB.in_flight_cost + bindparam("b_amount", type_=Money()))
    .returning(_JOB.id)
)


def note(sessions: sessionmaker[Session], *, job_id: str, run_count: int, amount: Decimal) -> bool:
    """Note, committed, that a call costing at most `amount` is about to start; False if the claim is lost."""
    params = {"b_job_id": job_id, "b_run": run_count, "b_amount": amount}
    engine: Engine = sessions.kw["bind"]
    if engine.dialect.name == "postgresql":
        return bool(execute_alone(engine, _NOTE, params))
    with sessions.begin() as session:
        return session.execute(_NOTE, params).first() is not None


def absorb(
    sessions: sessionmaker[Session],
    *,
    job_id: str,
    run_count: int,
    lost: Decimal,
    limits: Sequence[budget.ScopeLimits],
) -> Decimal:
    """Charge the calls a lost run left noted (`lost`) and top the reservation up by as much if it fits.

    Returns the top-up (`lost`, or 0 when the budget cannot cover it: the re-run then spends only what is
    left of the reservation). Called by the run that claimed the job with `run_count`.
    """
    for topup in (lost, Decimal(0)):
        try:
            with sessions.begin() as session:
                moved = session.execute(
                    update(RequestLog)
                    .where(RequestLog.id == job_id, states.held(run_count=run_count))
                    .values(
                        in_flight_cost=RequestLog.in_flight_cost - lost,
                        unconfirmed_cost=RequestLog.unconfirmed_cost + lost,
                        reserved_cost=RequestLog.reserved_cost + topup,
                    )
                    .returning(*budget.PERIOD_COLUMNS)
                ).first()
                if moved is None or topup == 0:
                    return Decimal(0)
                period = budget.Period.of_job(moved)
                for scope in limits:
                    budget.reserve(
                        session, scope=scope.scope, period=period, amount=topup, limit=scope.monthly, count=0,
                        window_limits=scope.windows,
                    )  # fmt: skip
                return topup
        except BudgetExceeded:
            logger.warning("the budget cannot cover a re-run's lost calls again job_id=%s lost=%s", job_id, lost)
    return Decimal(0)


def limits_for(session: Session, *, api_key_id: int | None, settings: Settings) -> list[budget.ScopeLimits]:
    """Return the scopes a job's money moves in with their limits in force, global first."""
    if api_key_id is None:
        return lifecycle.limits_of(settings, None)
    key = session.execute(
        select(ApiKey.id, ApiKey.monthly_budget, ApiKey.budget_windows).where(ApiKey.id == api_key_id)
    ).one_or_none()
    requester = lifecycle.Requester(api_key_id) if key is None else lifecycle.Requester.of_key(key)
    return lifecycle.limits_of(settings, requester)


def fail(
    sessions: sessionmaker[Session],
    *,
    job_id: str,
    where: ColumnElement[bool],
    code: str,
    message: str,
    now: datetime,
    at_least: Decimal = Decimal(0),
) -> endings.Finished | None:
    """Fail the job (while `where`, the transition that fails it, allows) charging every call not on record at
    its bound, and settle it once.

    The cost is what lost runs left charged plus the calls still noted in flight, or `at_least` (what the
    caller knows was billed) if that is more; one `unconfirmed` attempt carries it, so that the job's cost
    is the sum of its attempts as always. None if the job moved on meanwhile.
    """
    charged = RequestLog.unconfirmed_cost + RequestLog.in_flight_cost
    floor = literal(at_least, type_=Money())
    # fmt: off
    returned = (
        *budget.PERIOD_COLUMNS, RequestLog.api_key_id, RequestLog.reserved_cost,
        RequestLog.cost, RequestLog.unconfirmed_cost, RequestLog.model_used, RequestLog.tier,
        RequestLog.requested_model, RequestLog.requested_tier,
    )
    # fmt: on
    with sessions.begin() as session:
        job = session.execute(
            update(RequestLog)
            .where(RequestLog.id == job_id, where)
            .values(
                status=JobStatus.FAILED,
                error_code=code,
                error_message=message,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
                settled=True,
                cost=case((charged < floor, floor), else_=charged),
                unconfirmed_cost=charged,
                in_flight_cost=Decimal(0),
            )
            .returning(*returned)
        ).first()
        if job is None:
            return None
        if job.cost > 0:
            _record_charge(session, job_id=job_id, job=job, error_class=code, now=now)
        period = budget.Period.of_job(job)
        for scope in budget.scopes_of(job.api_key_id):
            budget.settle(session, scope=scope, period=period, reserved=job.reserved_cost, cost=job.cost)
        finished = endings.Finished(
            status=JobStatus.FAILED, job_id=job_id, model=job.model_used, tier=job.tier, error_code=code,
            unconfirmed_cost=job.unconfirmed_cost,
        )  # fmt: skip
        endings.after_terminal(session, job_id=job_id, finished=finished)
    return finished


def _record_charge(session: Session, *, job_id: str, job: Row[Any], error_class: str, now: datetime) -> None:
    """Add the attempt that carries a failed job's charge for its calls not on record.

    Which model a lost call went to is not known; the model the job was routed or pinned to stands for it.
    """
    last = session.scalar(select(func.coalesce(func.max(RequestAttempt.seq), 0)).where(RequestAttempt.job_id == job_id))
    session.add(
        RequestAttempt(
            job_id=job_id, seq=last + 1, model=job.model_used or job.requested_model or UNKNOWN,
            tier=job.tier or job.requested_tier or UNKNOWN, purpose="primary", outcome=UNCONFIRMED,
            error_class=error_class, latency_ms=0.0, cost=job.cost, started_at=now,
        )
    )  # fmt: skip
