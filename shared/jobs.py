"""The job use cases: accept a prompt (reserve and record), and run it (route, call, escalate, settle).

A job row moves queued → running → succeeded | failed. Running is claimed with a conditional UPDATE and a
lease, and finishing is conditional on still holding that claim, so a redelivered task never runs a job
twice at once and its reservation is settled exactly once. No transaction stays open across an upstream
call.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Row
from sqlalchemy import delete
from sqlalchemy import or_
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker
from tenacity import Retrying
from tenacity import retry_if_exception
from tenacity import stop_after_delay
from tenacity import wait_exponential_jitter

from shared import alerts
from shared import answering
from shared import budget
from shared import routing
from shared.catalog import Catalog
from shared.circuit import CircuitBreaker
from shared.config import Settings
from shared.db.models import JobStatus
from shared.db.models import RequestAttempt
from shared.db.models import RequestLog
from shared.db.types import utcnow
from shared.errors import BudgetExceeded
from shared.errors import NotCancellable
from shared.errors import NotFound
from shared.llm_client import LLMClient

logger = logging.getLogger(__name__)


# A run must end well inside its lease, or the reaper would hand the job to a second run while the first
# is still calling upstream (and paying for it): deadlines are capped at this share of JOB_LEASE_S.
DEADLINE_SHARE_OF_LEASE = 0.8

CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobRequest:
    """A validated prompt request, as the domain sees it."""

    prompt: str
    max_tokens: int = 1000
    preference: str = "balanced"
    model: str | None = None
    tier: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    on_budget_pressure: str = "fail"
    deadline_s: float | None = None
    callback_url: str | None = None


@dataclass(frozen=True)
class Requester:
    """The API key a job is charged to, and that key's own monthly budget (None: only the global one)."""

    api_key_id: int
    monthly_budget: Decimal | None = None


def create(
    session: Session,
    *,
    request: JobRequest,
    catalog: Catalog,
    settings: Settings,
    requester: Requester | None = None,
    job_id: str | None = None,
) -> RequestLog:
    """Reserve the job's cost bound and record it as queued; the caller commits, then enqueues.

    With `on_budget_pressure="downgrade"` a routed job that does not fit is capped at the strongest tier
    whose bound fits. Raises RoutingError for an unknown model or tier and BudgetExceeded when nothing fits.
    """
    pinned = request.model is not None or request.tier is not None
    now = utcnow()
    period = budget.Period.of(now)
    ceilings: list[str | None] = [None]
    if request.on_budget_pressure == "downgrade" and not pinned:
        ceilings += list(reversed(catalog.tiers[:-1]))
    refusal: BudgetExceeded | None = None
    for ceiling in ceilings:
        bound = bound_for(request, catalog=catalog, settings=settings, max_tier=ceiling)
        try:
            reserve(session, amount=bound, period=period, settings=settings, requester=requester)
        except BudgetExceeded as exc:
            refusal = refusal or exc
            continue
        job = new_job(
            request, job_id=job_id or uuid.uuid4().hex, bound=bound, period=period, settings=settings,
            requester=requester, max_tier=ceiling, now=now,
        )  # fmt: skip
        session.add(job)
        session.flush()
        return job
    assert refusal is not None
    raise refusal


def bound_for(request: JobRequest, *, catalog: Catalog, settings: Settings, max_tier: str | None = None) -> Decimal:
    """Return the most the job can cost (RoutingError for an unknown model or tier)."""
    pinned = request.model is not None or request.tier is not None
    return budget.reservation_bound(
        catalog=catalog,
        tiers=routing.candidate_tiers(catalog=catalog, model=request.model, tier=request.tier),
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        escalation=settings.escalation_enabled and not pinned,
        max_tier=max_tier,
    )


def reserve(
    session: Session,
    *,
    amount: Decimal,
    period: budget.Period,
    settings: Settings,
    requester: Requester | None,
    count: int = 1,
) -> None:
    """Reserve `amount` for `count` requests in every scope they are charged to, or in none of them."""
    limits = [(budget.GLOBAL_SCOPE, settings.monthly_budget_limit)]
    if requester is not None:
        own = requester.monthly_budget
        limits.append((budget.key_scope(requester.api_key_id), settings.monthly_budget_limit if own is None else own))
    # A savepoint: when the key's scope refuses, the global reservation made just before is undone.
    with session.begin_nested():
        for scope, limit in limits:
            budget.reserve(session, scope=scope, period=period, amount=amount, limit=limit, count=count)


def new_job(
    request: JobRequest,
    *,
    job_id: str,
    bound: Decimal,
    period: budget.Period,
    settings: Settings,
    requester: Requester | None,
    now: datetime,
    max_tier: str | None = None,
    batch_id: str | None = None,
    batch_index: int | None = None,
) -> RequestLog:
    """Return the row of a queued job whose bound is already reserved."""
    return RequestLog(
        id=job_id,
        status=JobStatus.QUEUED,
        created_at=now,
        updated_at=now,
        enqueued_at=now,
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        preference=request.preference,
        requested_model=request.model,
        requested_tier=request.tier,
        metadata_json=request.metadata,
        callback_url=request.callback_url,
        api_key_id=None if requester is None else requester.api_key_id,
        max_tier=max_tier,
        deadline_s=min(
            request.deadline_s or settings.default_deadline_s, settings.job_lease_s * DEADLINE_SHARE_OF_LEASE
        ),
        batch_id=batch_id,
        batch_index=batch_index,
        budget_year=period.year,
        budget_month=period.month,
        reserved_cost=bound,
        cost=Decimal(0),
    )


def withdraw(session: Session, *, job_id: str | None = None, batch_id: str | None = None) -> None:
    """Undo accepted work that could not be enqueued: forget its queued jobs and give back their reservations."""
    # One statement that writes first (see shared.db.session on SQLite transactions).
    removed = session.execute(
        delete(RequestLog)
        .where(_selected(job_id, batch_id), RequestLog.status == JobStatus.QUEUED)
        .returning(RequestLog.api_key_id, RequestLog.budget_year, RequestLog.budget_month, RequestLog.reserved_cost)
        .execution_options(synchronize_session=False)
    ).all()
    for (scope, period), (reserved, count) in _held(removed).items():
        budget.release(session, scope=scope, period=period, reserved=reserved, count=count)


def cancel_queued(session: Session, *, job_id: str | None = None, batch_id: str | None = None) -> list[str]:
    """End the selected jobs that have not started as cancelled and settle their reservations at nothing."""
    now = utcnow()
    cancelled = session.execute(
        update(RequestLog)
        .where(_selected(job_id, batch_id), RequestLog.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.FAILED,
            error_code=CANCELLED,
            error_message="cancelled before it started",
            finished_at=now,
            updated_at=now,
            settled=True,
        )
        .returning(
            RequestLog.api_key_id,
            RequestLog.budget_year,
            RequestLog.budget_month,
            RequestLog.reserved_cost,
            RequestLog.id,
        )
        .execution_options(synchronize_session=False)
    ).all()
    for (scope, period), (reserved, _) in _held(cancelled).items():
        budget.settle(session, scope=scope, period=period, reserved=reserved, cost=Decimal(0))
    return [row.id for row in cancelled]


def _selected(job_id: str | None, batch_id: str | None) -> object:
    assert (job_id is None) != (batch_id is None), "select one job or one batch"
    return RequestLog.id == job_id if job_id is not None else RequestLog.batch_id == batch_id


def _held(rows: Sequence[Row[Any]]) -> dict[tuple[str, budget.Period], tuple[Decimal, int]]:
    """Sum (api_key_id, year, month, reserved, ...) rows into what each scope's month holds for them."""
    held: dict[tuple[str, budget.Period], tuple[Decimal, int]] = {}
    for api_key_id, year, month, reserved, *_ in rows:
        for scope in budget.scopes_of(api_key_id):
            amount, count = held.get((scope, budget.Period(year, month)), (Decimal(0), 0))
            held[(scope, budget.Period(year, month))] = (amount + reserved, count + 1)
    return held


def get_or_raise(session: Session, *, job_id: str) -> RequestLog:
    """Return the job or raise NotFound."""
    job = session.get(RequestLog, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


@dataclass(frozen=True)
class Claim:
    """A job this worker now owns, with the fencing value that proves it when finishing."""

    job_id: str
    run_count: int
    request: JobRequest
    period: budget.Period
    reserved_cost: Decimal
    api_key_id: int | None = None
    max_tier: str | None = None
    deadline_s: float = 60.0


@dataclass
class Finished:
    """A job that reached a terminal state, and what that set off once committed."""

    status: JobStatus
    job_id: str
    alerts: list[alerts.Alert] = field(default_factory=list)
    callbacks: list[tuple[str, str]] = field(default_factory=list)


def after_terminal(session: Session, *, job_id: str, finished: Finished) -> None:
    """In the transaction that ended a job: note its callback and complete its batch if it was the last."""
    job = session.get(RequestLog, job_id, populate_existing=True)
    assert job is not None
    if job.callback_url:
        finished.callbacks.append(("job", job.id))
    if job.batch_id is not None:
        from shared import batches  # batches builds on this module

        completed = batches.complete_if_done(session, batch_id=job.batch_id)
        if completed is not None and completed.callback_url:
            finished.callbacks.append(("batch", completed.id))


def announce(finished: Finished, *, deps: RunDeps) -> None:
    """After commit: fire the alerts and callbacks a terminal job set off."""
    for alert in finished.alerts:
        deps.on_alert(alert)
    for resource, resource_id in finished.callbacks:
        deps.on_callback(resource, resource_id)


def cancel(session: Session, *, job_id: str) -> Finished:
    """Cancel a job that has not started, releasing its reservation; NotCancellable once it has."""
    if not cancel_queued(session, job_id=job_id):
        get_or_raise(session, job_id=job_id)
        raise NotCancellable(f"job {job_id!r} has already started or finished")
    finished = Finished(status=JobStatus.FAILED, job_id=job_id)
    after_terminal(session, job_id=job_id, finished=finished)
    return finished


@dataclass(frozen=True)
class Busy:
    """Another worker holds the job's lease until `lease_expires_at`."""

    lease_expires_at: datetime


@dataclass(frozen=True)
class RunDeps:
    """What running a job needs, built once per worker process."""

    sessions: sessionmaker[Session]
    catalog: Catalog
    settings: Settings
    client: LLMClient
    on_finished: Callable[[str], None] = lambda job_id: None
    # Called after commit with ("job" | "batch", id) when a callback_url is due a POST.
    on_callback: Callable[[str, str], None] = lambda resource, resource_id: None
    on_alert: Callable[[alerts.Alert], None] = alerts.log
    sleep: Callable[[float], None] = time.sleep
    breaker: CircuitBreaker | None = None

    @property
    def answerer(self) -> answering.Answerer:
        return answering.Answerer(
            catalog=self.catalog, settings=self.settings, client=self.client, breaker=self.breaker, sleep=self.sleep
        )


def run(job_id: str, *, deps: RunDeps) -> JobStatus | Busy | None:
    """Run the job if it is ours to run; return its final status, Busy, or None when already finished."""
    claim = _claim(job_id, deps=deps)
    if not isinstance(claim, Claim):
        return claim
    request = claim.request
    outcome = answering.answer(
        answering.Job(
            prompt=request.prompt,
            max_tokens=request.max_tokens,
            preference=request.preference,
            model=request.model,
            tier=request.tier,
            max_tier=claim.max_tier,
            reserved_cost=claim.reserved_cost,
            deadline_s=claim.deadline_s,
            previous_runs=claim.run_count - 1,
        ),
        using=deps.answerer,
    )
    finished = _finish_with_retries(claim, outcome, deps=deps)
    if finished is None:
        return None
    deps.on_finished(job_id)
    announce(finished, deps=deps)
    return finished.status


def _claim(job_id: str, *, deps: RunDeps) -> Claim | Busy | None:
    now = utcnow()
    with deps.sessions.begin() as session:
        result = session.execute(
            update(RequestLog)
            .where(
                RequestLog.id == job_id,
                or_(
                    RequestLog.status == JobStatus.QUEUED,
                    (RequestLog.status == JobStatus.RUNNING) & (RequestLog.lease_expires_at < now),
                ),
            )
            .values(
                status=JobStatus.RUNNING,
                started_at=now,
                updated_at=now,
                lease_expires_at=now + timedelta(seconds=deps.settings.job_lease_s),
                run_count=RequestLog.run_count + 1,
            )
            .execution_options(synchronize_session=False)
        )
        job = session.get(RequestLog, job_id, populate_existing=True)
        if job is None:
            logger.error("job does not exist job_id=%s", job_id)
            return None
        if result.rowcount != 1:  # type: ignore[attr-defined]
            if job.status is JobStatus.RUNNING and job.lease_expires_at is not None:
                return Busy(lease_expires_at=job.lease_expires_at)
            return None
        return Claim(
            job_id=job.id,
            run_count=job.run_count,
            request=JobRequest(
                prompt=job.prompt,
                max_tokens=job.max_tokens,
                preference=job.preference,
                model=job.requested_model,
                tier=job.requested_tier,
            ),
            period=budget.Period(job.budget_year, job.budget_month),
            reserved_cost=job.reserved_cost,
            api_key_id=job.api_key_id,
            max_tier=job.max_tier,
            deadline_s=job.deadline_s or deps.settings.default_deadline_s,
        )


def _finish_with_retries(claim: Claim, outcome: answering.Outcome, *, deps: RunDeps) -> Finished | None:
    """Record the outcome, retrying while the database is unreachable: the answer in hand is not thrown away.

    Retries stop before the lease lapses; past it another run may take the job over, and the conditional
    finish makes sure only one of them records and settles it.
    """
    retrying = Retrying(
        retry=retry_if_exception(_is_disconnect),
        wait=wait_exponential_jitter(multiplier=0.2, max=5),
        stop=stop_after_delay(deps.settings.job_lease_s * 0.5),
        sleep=deps.sleep,
        reraise=True,
        before_sleep=lambda state: logger.warning(
            "database unreachable while finishing job_id=%s; retrying", claim.job_id
        ),
    )
    return retrying(_finish, claim, outcome, deps=deps)


def _is_disconnect(error: BaseException) -> bool:
    return isinstance(error, OperationalError | InterfaceError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def _finish(claim: Claim, outcome: answering.Outcome, *, deps: RunDeps) -> Finished | None:
    """Record the outcome and settle the budget in one transaction, only while the claim still holds.

    Returns what the settlement set off (alerts, callbacks), or None if the claim was lost.
    """
    now = utcnow()
    completion = outcome.completion
    answered_by = outcome.model or deps.catalog.get_model(outcome.decision.model)
    values: dict[str, Any] = {
        "status": JobStatus.SUCCEEDED if completion is not None else JobStatus.FAILED,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "difficulty_score": round(outcome.difficulty.score, 4),
        "difficulty_level": outcome.difficulty.level,
        "model_used": answered_by.name,
        "tier": answered_by.tier,
        "confidence": None if outcome.confidence is None else round(outcome.confidence, 4),
        "latency_ms": outcome.latency_ms,
        "retry_count": outcome.retry_count,
        "escalated": outcome.escalated,
        "escalation_reason": outcome.escalation_reason,
        "downgraded_from": outcome.downgraded_from,
        "prompt_tokens": sum(record.prompt_tokens for _, record in outcome.attempts),
        "completion_tokens": sum(record.completion_tokens for _, record in outcome.attempts),
        "cost": outcome.cost,
        "settled": True,
    }
    values["tokens_used"] = values["prompt_tokens"] + values["completion_tokens"]
    if completion is not None:
        values.update(response=completion.text, finish_reason=completion.finish_reason)
    else:
        error = outcome.error
        values.update(
            error_code=error.code if error else "upstream_error",
            error_message=error.message if error else "the upstream call failed",
        )
    with deps.sessions.begin() as session:
        result = session.execute(
            update(RequestLog)
            .where(
                RequestLog.id == claim.job_id,
                RequestLog.status == JobStatus.RUNNING,
                RequestLog.run_count == claim.run_count,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            # Our lease lapsed and another run took the job over; it will record and settle it.
            logger.warning("lost the claim before finishing job_id=%s", claim.job_id)
            return None
        session.add_all(
            RequestAttempt(
                job_id=claim.job_id,
                seq=seq,
                model=record.model,
                tier=record.tier,
                purpose=purpose,
                outcome=record.outcome,
                error_class=record.error_class,
                status_code=record.status_code,
                latency_ms=record.latency_ms,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cost=record.cost,
                started_at=record.started_at,
            )
            for seq, (purpose, record) in enumerate(outcome.attempts, start=1)
        )
        finished = Finished(status=values["status"], job_id=claim.job_id)
        for scope in budget.scopes_of(claim.api_key_id):
            budget.settle(session, scope=scope, period=claim.period, reserved=claim.reserved_cost, cost=outcome.cost)
            if outcome.cost > 0:
                finished.alerts += alerts.check(
                    session, scope=scope, period=claim.period, thresholds=deps.settings.alert_thresholds
                )
        after_terminal(session, job_id=claim.job_id, finished=finished)
    logger.info(
        "job finished job_id=%s status=%s model=%s cost=%s",
        claim.job_id,
        values["status"],
        values["model_used"],
        values["cost"],
    )
    return finished
