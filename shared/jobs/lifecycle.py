"""Accepting jobs (reserve and record), and undoing or cancelling those that have not started.

A job moves only by the transitions of shared.jobs.states; shared.jobs.runs takes it from queued to terminal,
and shared.jobs.endings holds what a terminal job sets off.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import Row
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import joinedload

from shared.config import Settings
from shared.errors import BudgetExceeded
from shared.errors import NotCancellable
from shared.errors import NotFound
from shared.jobs import endings
from shared.jobs import single_statement
from shared.jobs import states
from shared.ledger import budget
from shared.ledger import model_access
from shared.ledger import window_spans
from shared.observability import logs
from shared.routing import difficulty
from shared.routing import policy
from shared.routing.catalog import Catalog
from shared.store.models import REQUEST_LOG_COLUMNS
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.types import utcnow

logger = logging.getLogger(__name__)


CANCELLED = "cancelled"
# Jobs and batches have ids of one form (uuid4().hex) in columns of one length.
ID_LENGTH: int = RequestLog.__table__.c.id.type.length  # type: ignore[attr-defined]


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
    difficulty_estimator: str | None = None
    # When its model is rate limited: "wait" for its turn or "fallback" to a pricier model (RATE_LIMIT_POLICY).
    on_rate_limit: str | None = None
    # Sealed (shared.security.sealing): stored encrypted, opened only by the worker that delivers to it.
    callback_url: str | None = None
    # A chat's turns ({"role", "content"}) sent upstream as they are; `prompt` is then the conversation's
    # text, which difficulty and the cost bound are estimated from.
    messages: list[dict[str, str]] | None = None
    # Sampling parameters passed through to the upstream as they are (temperature, top_p, stop, user, ...).
    options: dict[str, Any] | None = None
    # Stream the answer's deltas to the waiting request (shared.store.stream_relay); never escalated.
    stream: bool = False
    # The only catalog models the job may call: its key's allowed_models when accepted (shared.ledger.model_access).
    allowed_models: frozenset[str] | None = None


@dataclass(frozen=True)
class Requester:
    """The API key a job is charged to, that key's own monthly budget (None: only the global one), and its own
    budget windows (shared.ledger.windows; none: only the service's)."""

    api_key_id: int
    monthly_budget: Decimal | None = None
    budget_windows: Mapping[str, Decimal] = field(default_factory=dict, hash=False)

    @classmethod
    def of_key(cls, key: Any) -> Requester:
        """Return the requester a key row stands for (its id, monthly_budget and stored budget_windows)."""
        return cls(key.id, key.monthly_budget, window_spans.validated(key.budget_windows))


@dataclass(frozen=True)
class Accepted:
    """A job recorded as queued, with the bound reserved for it."""

    id: str
    reserved_cost: Decimal
    max_tier: str | None
    deadline_s: float


# Every request writes its job: a Core INSERT built once (the ORM's unit of work costs more than the SQL).
_RECORD_JOB = insert(RequestLog.__table__)


def create(
    session: Session,
    *,
    request: JobRequest,
    catalog: Catalog,
    settings: Settings,
    requester: Requester | None = None,
    job_id: str | None = None,
    cache_key: str | None = None,
) -> Accepted:
    """Record the job as queued and reserve its cost bound; the caller commits, then enqueues.

    With `on_budget_pressure="downgrade"` a routed job that does not fit is capped at the strongest tier
    whose bound fits. Raises RoutingError for an unknown model or tier and BudgetExceeded when nothing fits;
    the caller then rolls back (the job's row is already written).
    """
    pinned = request.model is not None or request.tier is not None
    now = utcnow()
    period = budget.Period.of(now, windowed=windowed_scopes(settings, requester))
    ceilings: list[str | None] = [None]
    if request.on_budget_pressure == "downgrade" and not pinned:
        ceilings += list(reversed(model_access.catalog_for(catalog, request.allowed_models).tiers[:-1]))
    refusal: BudgetExceeded | None = None
    job: dict[str, Any] | None = None
    for ceiling in ceilings:
        bound = bound_for(request, catalog=catalog, settings=settings, max_tier=ceiling)
        if job is None:
            job = job_values(
                request, job_id=job_id or uuid.uuid4().hex, bound=bound, period=period, settings=settings,
                requester=requester, max_tier=ceiling, now=now, cache_key=cache_key,
            )  # fmt: skip
            session.execute(_RECORD_JOB, {REQUEST_LOG_COLUMNS[name].key: value for name, value in job.items()})
        else:
            job.update(reserved_cost=bound, max_tier=ceiling)
            session.execute(
                update(RequestLog.__table__)
                .where(RequestLog.__table__.c.id == job["id"])
                .values(reserved_cost=bound, max_tier=ceiling)
            )
        # The job's row is written before the reservation: every request locks the month's ledger row, so
        # the reservation goes last, right before the commit that releases it.
        try:
            reserve(session, amount=bound, period=period, settings=settings, requester=requester, now=now)
        except BudgetExceeded as exc:
            refusal = refusal or exc
            continue
        return Accepted(id=job["id"], reserved_cost=bound, max_tier=ceiling, deadline_s=job["deadline_s"])
    assert refusal is not None
    raise refusal


def create_and_commit(
    session: Session,
    *,
    alone: bool,
    request: JobRequest,
    catalog: Catalog,
    settings: Settings,
    requester: Requester | None = None,
    job_id: str | None = None,
    cache_key: str | None = None,
) -> Accepted:
    """create() and commit the session's transaction; `alone`: the transaction holds nothing else yet, so the
    job may be written as one self-committing statement (create_alone) where the database allows it.
    """
    creation: dict[str, Any] = dict(
        request=request, catalog=catalog, settings=settings, requester=requester, job_id=job_id, cache_key=cache_key
    )
    bind = session.get_bind()
    accepted = create_alone(bind, **creation) if alone and isinstance(bind, Engine) else None
    if accepted is None:
        accepted = create(session, **creation)
        session.commit()
    return accepted


def create_alone(
    engine: Engine,
    *,
    request: JobRequest,
    catalog: Catalog,
    settings: Settings,
    requester: Requester | None = None,
    job_id: str | None = None,
    cache_key: str | None = None,
) -> Accepted | None:
    """create() and its commit as one statement, on PostgreSQL, for a caller with no transaction open.

    Returns None, having written nothing, when the transactional create() must decide: another database, a
    scope with budget windows (shared.ledger.windows), a month with no ledger row yet, or a bound that does not
    fit (a refusal or a downgrade).
    """
    if engine.dialect.name != "postgresql" or windowed_scopes(settings, requester):
        return None
    now = utcnow()
    period = budget.Period.of(now)
    bound = bound_for(request, catalog=catalog, settings=settings)
    job = job_values(
        request, job_id=job_id or uuid.uuid4().hex, bound=bound, period=period, settings=settings,
        requester=requester, now=now, cache_key=cache_key,
    )  # fmt: skip
    if not single_statement.accept(engine, job=job, period=period, limits=limits_of(settings, requester)):
        return None
    return Accepted(id=job["id"], reserved_cost=bound, max_tier=None, deadline_s=job["deadline_s"])


def limits_of(settings: Settings, requester: Requester | None) -> list[budget.ScopeLimits]:
    """Return each scope a request is charged to with its limits, the global scope first.

    A key without a monthly budget of its own is held to the global one; a key's windows are its own only
    (the service's windows already bound everything).
    """
    limits = [budget.ScopeLimits(budget.GLOBAL_SCOPE, settings.monthly_budget_limit, settings.budget_windows)]
    if requester is not None:
        own = requester.monthly_budget
        monthly = settings.monthly_budget_limit if own is None else own
        limits.append(budget.ScopeLimits(budget.key_scope(requester.api_key_id), monthly, requester.budget_windows))
    return limits


def windowed_scopes(settings: Settings, requester: Requester | None) -> list[str]:
    """Return the scopes of a request that have budget windows: its money sits in their hourly buckets too."""
    return [limits.scope for limits in limits_of(settings, requester) if limits.windows]


def bound_for(request: JobRequest, *, catalog: Catalog, settings: Settings, max_tier: str | None = None) -> Decimal:
    """Return the most the job can cost (RoutingError for an unknown model, tier or estimator): what both
    accept paths reserve, computed from the request as its calls send it (see shared.ledger.call_bound), over
    the models it may call alone."""
    difficulty.get_estimator(request.difficulty_estimator or settings.difficulty_estimator)
    pinned = request.model is not None or request.tier is not None
    catalog = model_access.catalog_for(catalog, request.allowed_models)
    return budget.reservation_bound(
        catalog=catalog,
        tiers=policy.candidate_tiers(catalog=catalog, model=request.model, tier=request.tier),
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        escalation=settings.escalation_enabled and not pinned,
        max_tier=max_tier,
        messages=request.messages,
        options=request.options,
    )


def reserve(
    session: Session,
    *,
    amount: Decimal,
    period: budget.Period,
    settings: Settings,
    requester: Requester | None,
    now: datetime,
    count: int = 1,
) -> None:
    """Reserve `amount` for `count` requests in every scope they are charged to, or in none of them."""
    limits = limits_of(settings, requester)
    if len(limits) == 1:
        # budget.reserve either holds the amount or changes nothing (it undoes its own month's reservation
        # when a window refuses): no savepoint needed.
        (only,) = limits
        budget.reserve(
            session, scope=only.scope, period=period, amount=amount, limit=only.monthly, count=count,
            window_limits=only.windows, now=now,
        )  # fmt: skip
        return
    # A savepoint: when the key's scope refuses, the global reservation made just before is undone.
    with session.begin_nested():
        for scope in limits:
            budget.reserve(
                session, scope=scope.scope, period=period, amount=amount, limit=scope.monthly, count=count,
                window_limits=scope.windows, now=now,
            )  # fmt: skip


def job_values(
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
    cache_key: str | None = None,
) -> dict[str, Any]:
    """Return the row of a queued job whose bound is already reserved (`cache_key`: shared.jobs.response_cache)."""
    return dict(
        id=job_id,
        status=JobStatus.QUEUED,
        created_at=now,
        updated_at=now,
        enqueued_at=now,
        prompt=request.prompt,
        messages=request.messages,
        upstream_options=request.options,
        stream=request.stream,
        max_tokens=request.max_tokens,
        preference=request.preference,
        requested_model=request.model,
        requested_tier=request.tier,
        metadata_json=request.metadata,
        callback_url=request.callback_url,
        cache_key=cache_key,
        api_key_id=None if requester is None else requester.api_key_id,
        allowed_models=None if request.allowed_models is None else sorted(request.allowed_models),
        max_tier=max_tier,
        difficulty_estimator=request.difficulty_estimator or settings.difficulty_estimator,
        on_rate_limit=request.on_rate_limit or settings.rate_limit_policy,
        # A run must end inside its lease, or the reaper would hand the job to a second run while the first
        # is still calling upstream (and paying for it): see shared.config.TimeLimits.
        deadline_s=settings.deadline_for(request.deadline_s),
        batch_id=batch_id,
        batch_index=batch_index,
        budget_year=period.year,
        budget_month=period.month,
        windowed_scopes=list(period.windowed) or None,
        reserved_cost=bound,
        cost=Decimal(0),
        # The id of the HTTP request that created the job, bound by the web tier for its logs.
        request_id=logs.current("request_id"),
    )


def new_job(request: JobRequest, **row: Any) -> RequestLog:
    """Return job_values(request, **row) as a mapped row, for callers that add several jobs to the session."""
    return RequestLog(**job_values(request, **row))


def withdraw(session: Session, *, job_id: str | None = None, batch_id: str | None = None) -> None:
    """Undo accepted work that could not be enqueued: forget its queued jobs and give back their reservations."""
    # One statement that writes first (see shared.store.session on SQLite transactions).
    removed = session.execute(
        delete(RequestLog)
        .where(_selected(job_id, batch_id), states.WITHDRAW.allows())
        .returning(*_HELD_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    for (scope, period), (reserved, count) in _held(removed).items():
        budget.release(session, scope=scope, period=period, reserved=reserved, count=count)


def cancel_queued(session: Session, *, job_id: str | None = None, batch_id: str | None = None) -> list[str]:
    """End the selected jobs that have not started as cancelled and settle their reservations at nothing."""
    now = utcnow()
    cancelled = session.execute(
        update(RequestLog)
        .where(_selected(job_id, batch_id), states.CANCEL.allows())
        .values(
            status=JobStatus.FAILED,
            error_code=CANCELLED,
            error_message="cancelled before it started",
            finished_at=now,
            updated_at=now,
            settled=True,
        )
        .returning(*_HELD_COLUMNS, RequestLog.id)
        .execution_options(synchronize_session=False)
    ).all()
    for (scope, period), (reserved, _) in _held(cancelled).items():
        budget.settle(session, scope=scope, period=period, reserved=reserved, cost=Decimal(0))
    return [row.id for row in cancelled]


def _selected(job_id: str | None, batch_id: str | None) -> object:
    assert (job_id is None) != (batch_id is None), "select one job or one batch"
    return RequestLog.id == job_id if job_id is not None else RequestLog.batch_id == batch_id


# What _held reads of each job.
_HELD_COLUMNS = (RequestLog.api_key_id, RequestLog.reserved_cost, *budget.PERIOD_COLUMNS)


def _held(rows: Sequence[Row[Any]]) -> dict[tuple[str, budget.Period], tuple[Decimal, int]]:
    """Sum job rows (_HELD_COLUMNS) into what each scope's month (and hour bucket) holds for them."""
    held: dict[tuple[str, budget.Period], tuple[Decimal, int]] = {}
    for row in rows:
        period = budget.Period.of_job(row)
        for scope in budget.scopes_of(row.api_key_id):
            amount, count = held.get((scope, period), (Decimal(0), 0))
            held[(scope, period)] = (amount + row.reserved_cost, count + 1)
    return held


def could_be_stored_id(value: str) -> bool:
    """Whether `value` could be the id of a stored job or batch: no longer than the column (32 characters) and
    free of NUL, which PostgreSQL refuses in text. Anything else is unknown without a query, which would fail.
    """
    return len(value) <= ID_LENGTH and "\x00" not in value


def get_or_raise(session: Session, *, job_id: str) -> RequestLog:
    """Return the job, its attempts loaded in the same query, or raise NotFound."""
    job = (
        session.get(RequestLog, job_id, options=[joinedload(RequestLog.attempts)])
        if could_be_stored_id(job_id)
        else None
    )
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


def cancel(session: Session, *, job_id: str) -> endings.Finished:
    """Cancel a job that has not started, releasing its reservation; NotCancellable once it has."""
    if not cancel_queued(session, job_id=job_id):
        get_or_raise(session, job_id=job_id)
        raise NotCancellable(f"job {job_id!r} has already started or finished")
    finished = endings.Finished(status=JobStatus.FAILED, job_id=job_id)
    endings.after_terminal(session, job_id=job_id, finished=finished)
    return finished
